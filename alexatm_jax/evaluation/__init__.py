"""Few-shot evaluation: metrics, task cards, prompt rendering, data loaders and the runner."""
