"""Lung segmentation: masks from V7 polygons, the U-Net, its verified weights, batched inference
(TensorFlow/numpy only; no Spark, Horovod or MLflow)."""
