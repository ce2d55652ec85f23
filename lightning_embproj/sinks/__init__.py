"""Where projections go: W&B, local files, TensorBoard, the HTML view."""
