// Cross-origin isolation for the static folder's page: ONNX Runtime Web uses threads only where the page
// is isolated (self.crossOriginIsolated), which needs two response headers. `mnist-nn serve` sends them;
// a static host does not, so the folder carries a service worker that adds them (isolation-worker.js,
// beside index.html). It takes effect from the next load: the first visit registers it and reloads once.

const WORKER = "isolation-worker.js";
const TRIED = "mnist-nn:isolation-reload"; // in this tab's sessionStorage: reload at most once
const WAIT_MS = 3000; // for the worker to be active; a worker that never gets there costs no more than this

// The threads the model gets in an isolated page: half the cores, up to 4, as the runtime's own default.
// Half, not all: the runtime's threads wait for each other by spinning, so a thread that shares its core
// with the browser's own work or another program stalls every layer (on 2 busy cores, 2 threads took
// twice as long as one; docs/web-page.md).
export function isolatedThreads() {
  return Math.min(4, Math.ceil((navigator.hardwareConcurrency || 1) / 2));
}

// true when the page is about to reload isolated (the caller should do nothing more), false otherwise:
// already isolated, no use for it (one thread either way: no reload for nothing), or out of reach here
// (no service workers, not a secure context, or it did not take on the reload already tried).
export async function isolate() {
  if (isolatedThreads() < 2 || !("serviceWorker" in navigator) || !self.isSecureContext) return false;
  try {
    if (self.crossOriginIsolated) {
      sessionStorage.removeItem(TRIED); // a later uncontrolled load (a hard reload) may reload once again
      return false;
    }
    if (sessionStorage.getItem(TRIED)) return false;
    await navigator.serviceWorker.register(WORKER);
    const late = new Promise((resolve) => setTimeout(() => resolve(null), WAIT_MS));
    if (!(await Promise.race([navigator.serviceWorker.ready, late]))) return false;
    sessionStorage.setItem(TRIED, "1");
  } catch {
    return false; // a host that does not serve the worker, a browser that refuses: one thread it is
  }
  location.reload();
  return true;
}
