"""Training: Petastorm -> tf.data (data.py), the model registry (models.py), the Horovod loop (loop.py)."""
