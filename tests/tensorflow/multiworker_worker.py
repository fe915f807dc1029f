"""One worker of tests/tensorflow/test_tf_multiworker.py: joins a MultiWorkerMirroredStrategy over
localhost (TF_CONFIG from the arguments), computes simclr_loss.keras.SimCLRLoss (reduction none) of its rows
of a golden case and the tape gradients of their sum, and prints them as JSON."""

import json
import os
import sys

index, ports, case_file, starts = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": ["localhost:" + p for p in ports]},
    "task": {"type": "worker", "index": index}})

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import simclr_loss.keras as sk  # noqa: E402

with open(case_file) as f:
    case = json.load(f)
starts = [int(s) for s in starts.split(",")]
dtype = np.float32 if case["dtype"] == "float32" else np.float64
za = np.asarray(case["za"], dtype)[starts[index]:starts[index + 1]]
zb = np.asarray(case["zb"], dtype)[starts[index]:starts[index + 1]]

strategy = tf.distribute.MultiWorkerMirroredStrategy()
assert strategy.num_replicas_in_sync == len(ports)


def step(a, b):
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss = sk.SimCLRLoss(temperature=case["temperature"], reduction="none")(a, b)
        objective = tf.reduce_sum(loss)
    return (loss,) + tuple(tape.gradient(objective, [a, b]))


a = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(za))
b = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(zb))
out = tf.function(lambda a, b: strategy.run(step, args=(a, b)))(a, b)
local = [strategy.experimental_local_results(o)[0].numpy().tolist() for o in out]
print(json.dumps({"loss": local[0], "grad_za": local[1], "grad_zb": local[2]}))
