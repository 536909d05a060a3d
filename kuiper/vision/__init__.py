"""Computer-vision pipelines around the graph: classification (lesson 06), detection (lesson 07),
segmentation (lesson 08)."""
