"""What convert() does to the torchvision and timm zoos: pooling layers inserted, tied groups, MACs.

    python benchmarks/convert_zoo.py            # markdown table on stdout
    python benchmarks/convert_zoo.py --size 128 # at another input size
    python benchmarks/convert_zoo.py --all-torchvision   # every torchvision classification and video model

For each model: the strided layers replaced, the pooling instances they share (a tied group is an
instance with two layers or more), and the multiply-accumulates of the convolutions and linear
layers at size x size before and after conversion, at the initial strides (DiffStride's output
is size / S + 2R at a stride S, so a converted model costs a little more until its strides
move; attention matmuls of transformers are not counted). Models whose conversion is refused
are listed with the reason.
"""
import argparse
import time
import warnings

import torch

import diffstride
from diffstride.convert import ConversionError

VIDEO = ["r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v1_b", "swin3d_t"]  # torchvision.models.video
TORCHVISION = ["inception_v3", "googlenet", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
               "mobilenet_v3_large", "efficientnet_b0", "mnasnet0_5", "regnet_x_400mf", "regnet_y_400mf",
               "shufflenet_v2_x0_5", "densenet121", "convnext_tiny", "vgg11", "squeezenet1_0", "swin_t", "vit_b_16"]
TIMM = ["resnet50", "resnet50d", "efficientnet_b0", "mobilenetv3_large_100", "regnety_002", "convnext_nano",
        "cspresnet50", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
        # anti-aliased (BlurPool2d, AvgPool2d in the aa slot), normalizer-free, space-to-depth stem,
        # Inception, multi-resolution
        "resnetblur50", "resnetaa50", "nf_resnet26", "nfnet_f0", "tresnet_m", "inception_v3", "hrnet_w18_small"]


def _make(source: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if source in ("torchvision", "torchvision.video"):
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--all-torchvision", action="store_true",
                        help="every classification and video model of torchvision.models.list_models()")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    print(f"| source | model | layers replaced | pooling instances | tied groups | GMACs at {args.size}² before "
          f"| after (initial strides) | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    torchvision_names, video_names = TORCHVISION, VIDEO
    if args.all_torchvision:
        import torchvision

        torchvision_names = torchvision.models.list_models(module=torchvision.models)
        video_names = torchvision.models.list_models(module=torchvision.models.video)
    sources = [("torchvision", n) for n in torchvision_names] + [("torchvision.video", n) for n in video_names]
    try:
        import timm  # noqa: F401

        sources += [("timm", n) for n in TIMM]
    except ImportError:
        print("(timm not installed: its models are left out)")
    counts = {"converted": 0, "refused": 0}
    for source, name in sources:
        # video models take (C, T, H, W) clips: 16 frames at 112x112 (their training size)
        shape = (3, args.size, args.size)
        if source == "torchvision.video":  # the ResNets train on 112x112 clips, S3D and the transformers on 224x224
            shape = (3, 16, 112, 112) if name in ("r3d_18", "mc3_18", "r2plus1d_18") else (3, 16, 224, 224)
        if name == "inception_v3" and args.size < 299:
            shape = (3, 299, 299)  # its auxiliary head needs Inception's own size
        original = _make(source, name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, changes = diffstride.convert(original, example_input=torch.zeros((1,) + shape))
        except ConversionError as err:
            counts["refused"] += 1
            print(f"| {source} | {name} | refused: {str(err).split('. ')[0][:160]} |||||", flush=True)
            continue
        counts["converted"] += 1
        members = {}
        for change in changes:  # a chain ("A.1 then B.1", R(2+1)D's shortcuts) belongs to each of its instances
            for instance in change.pooling.split(" then "):
                members.setdefault(instance, []).append(change.name)
        tied = sum(len(m) > 1 for m in members.values())
        try:
            with torch.no_grad():
                before = diffstride.count_flops(original, shape) / 1e9
                after = diffstride.count_flops(model.eval(), shape) / 1e9
        except Exception as err:  # noqa: BLE001 (a row that says why, not a crash of the table)
            print(f"| {source} | {name} | {len(changes)} | {len(members)} | {tied} | not counted: "
                  f"{type(err).__name__}: {str(err)[:80]} |||", flush=True)
            continue
        print(f"| {source} | {name} | {len(changes)} | {len(members)} | {tied} | {before:.2f} | {after:.2f} "
              f"| {after / before:.2f} |", flush=True)
    print(f"\n{counts['converted']} converted and proved against moving strides, {counts['refused']} refused "
          f"({time.time() - started:.0f} s; torch {torch.__version__})")


if __name__ == "__main__":
    main()
