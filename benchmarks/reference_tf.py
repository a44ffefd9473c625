"""The TensorFlow reference against this project, timed in the same run (a benchmark, not a test).

    pip install tensorflow tf_keras       # the reference's own dependencies (CPU wheels are fine)
    git clone https://github.com/google-research/diffstride /path/to/reference
    python benchmarks/reference_tf.py --reference /path/to/reference [--threads 2] [--repeats 5] [--quick]

Times, in turns, the reference's layers (``diffstride/pooling.py`` of the checkout, channels_last
as it runs on CPU) and ours (``algorithm='auto'``, channels_last), forward+backward at the
ResNet-18 / CIFAR shapes, then one ResNet-18 training step (forward, backward, SGD update; the
reference's ``resnet.py`` with tf_keras) for each pooling, and prints reference / ours. Both
libraries get ``--threads`` threads. Without tensorflow, tf_keras or a checkout it prints why
and exits 0: its ratios are optional, and nothing else in the project depends on them.
"""
import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = [(64, 32, 32), (128, 32, 32), (256, 16, 16), (512, 8, 8)]


def _skip(reason: str) -> None:
    print(f"skipped: {reason}", flush=True)
    sys.exit(0)


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=os.environ.get("DIFFSTRIDE_REFERENCE"),
                        help="a checkout of google-research/diffstride (or $DIFFSTRIDE_REFERENCE)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="two layer shapes, 2 repeats")
    args = parser.parse_args()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the reference is written for tf.keras 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # torch (and what diffstride imports of it, dynamo and triton) before tensorflow: the other
    # order segfaults while triton loads (torch 2.14.1, tensorflow 2.21)
    import torch
    import torch.nn.functional as F

    from benchmarks.common import interleaved_medians, machine_header
    from diffstride import pooling, resnet

    try:
        import tensorflow as tf
        import tf_keras  # noqa: F401
    except ImportError as err:
        _skip(f"tensorflow and tf_keras are not importable ({err}); pip install tensorflow tf_keras")
    if not args.reference:
        _skip("no reference checkout: pass --reference PATH (a clone of google-research/diffstride)")
    files = {name: os.path.join(args.reference, "diffstride", f"{name}.py") for name in ("pooling", "resnet")}
    missing = [p for p in files.values() if not os.path.exists(p)]
    if missing:
        _skip(f"{', '.join(missing)} not found: --reference must be the root of a google-research/diffstride checkout")

    torch.set_num_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ref_pooling = _load(files["pooling"], "reference_diffstride_pooling")
    ref_resnet = _load(files["resnet"], "reference_diffstride_resnet")
    repeats = 2 if args.quick else args.repeats
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(machine_header(torch.device("cpu"), args.threads) + f"; tensorflow {tf.__version__}")
    log(f"batch {args.batch}, float32, channels_last, forward+backward; medians of {repeats}, in turns")
    log("| what | TF reference ms | this project ms | reference / this |")
    log("|---|---:|---:|---:|")

    for c, h, w in SHAPES[:2] if args.quick else SHAPES:
        tf_layer = ref_pooling.DiffStride(strides=(2.0, 2.0), data_format="channels_last")
        tf_x = tf.random.normal((args.batch, h, w, c))
        tf_layer(tf_x)

        def tf_step():
            with tf.GradientTape() as tape:
                tape.watch(tf_x)
                y = tf_layer(tf_x)
            tape.gradient(y, [tf_x] + tf_layer.trainable_variables)

        layer = pooling.DiffStride(strides=(2.0, 2.0))
        x = torch.randn(args.batch, c, h, w).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        grad = torch.ones_like(layer(x))

        def torch_step():
            layer(x).backward(grad)
            x.grad = layer.strides.grad = None

        t_tf, t_torch = interleaved_medians([tf_step, torch_step], repeats, warmup=1)
        log(f"| DiffStride layer {c}x{h}x{w} | {t_tf:.1f} | {t_torch:.1f} | {t_tf / t_torch:.2f}x |")

    for name, ours, theirs in (("DiffStride", pooling.DiffStride, ref_pooling.DiffStride),
                               ("FixedSpectralPooling", pooling.FixedSpectralPooling, ref_pooling.FixedSpectralPooling),
                               ("strided conv", None, None)):
        keras_model = ref_resnet.resnet18(num_output_classes=10, pooling_cls=theirs, channels_first=False,
                                          output_activation="softmax", weight_decay=5e-4)
        optimizer = tf.keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
        loss_fn = tf.keras.losses.CategoricalCrossentropy()
        tf_x = tf.random.normal((args.batch, 32, 32, 3))
        tf_y = tf.one_hot(tf.random.uniform((args.batch,), 0, 10, dtype=tf.int32), 10)
        keras_model(tf_x)

        def tf_train_step():
            with tf.GradientTape() as tape:
                loss = loss_fn(tf_y, keras_model(tf_x, training=True)) + tf.add_n(keras_model.losses)
            grads = tape.gradient(loss, keras_model.trainable_variables)
            optimizer.apply_gradients(zip(grads, keras_model.trainable_variables))

        model = resnet.resnet18(num_output_classes=10, pooling_cls=ours, output_activation="softmax",
                                weight_decay=5e-4).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(resnet.l2_param_groups(model), lr=0.01, momentum=0.9)
        x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        y = F.one_hot(torch.randint(0, 10, (args.batch,)), 10).float()

        def torch_train_step():
            loss = -(y * model(x).clamp(1e-7, 1 - 1e-7).log()).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_tf, t_torch = interleaved_medians([tf_train_step, torch_train_step], repeats, warmup=1)
        log(f"| ResNet-18 training step, {name} | {t_tf:.0f} | {t_torch:.0f} | {t_tf / t_torch:.2f}x |")


if __name__ == "__main__":
    main()
