"""The learning lab: explanations, a network's insides, the lr range test, runs compared, robustness."""
