// The static folder's service worker (`mnist-nn export --format web` puts it beside index.html): it adds
// the two headers that make the page cross-origin isolated (Cross-Origin-Opener-Policy: same-origin,
// Cross-Origin-Embedder-Policy: require-corp) to this folder's own responses, where a static host
// (python -m http.server, GitHub Pages) cannot be told to send them. Isolated, the page may share
// memory with workers, and ONNX Runtime Web runs the model on several threads. Nothing else changes:
// every request still goes to the network as the page made it, and other origins' are left alone.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

async function isolated(request) {
  const response = await fetch(request);
  if (response.type === "opaque" || response.status === 0) return response;
  const headers = new Headers(response.headers);
  headers.set("Cross-Origin-Opener-Policy", "same-origin");
  headers.set("Cross-Origin-Embedder-Policy", "require-corp");
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

// Only this folder's own page is made isolated: another site served later at the same address and path
// (a worker outlives the folder it came with) gets its pages exactly as its server sends them.
const PAGES = new Set([self.registration.scope, new URL("index.html", self.registration.scope).href]);

self.addEventListener("fetch", (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate" && !PAGES.has(url.origin + url.pathname)) return;
  if (request.cache === "only-if-cached" && request.mode !== "same-origin") return;
  event.respondWith(isolated(request));
});
