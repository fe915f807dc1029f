"""simclr.keras: a drop-in replacement for TensorFlow Similarity's SimCLRLoss (tf.keras, Keras 2).

    from simclr.keras import SimCLRLoss      # instead of: from tensorflow_similarity.losses import SimCLRLoss
    loss = SimCLRLoss(temperature=0.1)       # the same constructor, config and serializable name

A tf.keras.losses.Loss whose call(za, zb) is the library's per-example loss [n] (the TensorFlow custom
op of simclr.tensorflow, with its closed-form gradient and, under a tf.distribute strategy, global
negatives from the replicas' all-gathers). Everything else is the Keras base class's own: sample_weight,
the reductions, the distribution rule (inside strategy.run, "auto" and "sum_over_batch_size" raise
Keras's ValueError; in model.fit, Keras scales the loss by the number of replicas itself).

Supported: TensorFlow 2.15 with its Keras 2 (tf.keras), the setting TF Similarity runs on.
"""

import tensorflow as tf

from .tensorflow import _check_temperature, simclr_loss

__all__ = ["SimCLRLoss"]


class SimCLRLoss(tf.keras.losses.Loss):
    """TensorFlow Similarity's SimCLRLoss (NT-Xent, both directions summed) on the library's op.

    SimCLRLoss(temperature=0.05, **kwargs), kwargs those of tf.keras.losses.Loss (reduction, name).
    Called as loss(za, zb, sample_weight=None) with za, zb: [n, d] (Keras's y_true and y_pred): row i
    of za and of zb are a positive pair. get_config(): {'reduction', 'name', 'temperature'}, TF
    Similarity's dict; registered as "Similarity>SimCLRLoss", TF Similarity's serializable name, so
    a model saved with TF Similarity's loss loads with this one. temperature must be > 0 and finite
    (ValueError; Keras does not check it).
    """

    def __init__(self, temperature: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        _check_temperature(temperature)
        self.temperature = temperature

    def call(self, za, zb):
        return simclr_loss(za, zb, temperature=self.temperature)

    def get_config(self):
        config = {"temperature": self.temperature}
        base_config = super().get_config()
        return {**base_config, **config}


# TF Similarity's name (package "Similarity", class "SimCLRLoss"). Keras keeps one class per name: when
# both libraries are imported, the one imported last holds it.
tf.keras.utils.register_keras_serializable(package="Similarity")(SimCLRLoss)
