#!/usr/bin/env bash
# Evidence II (issue 22): the grids behind docs/results.md's equal-compute front, shift
# consistency and 1-D CBF table. Resumable: run it again after an interruption and finished cells
# are skipped, unfinished ones resume from their newest checkpoint. One CPU thread in all, so that
# it can run beside other work on a 2-core machine.
#
#   ROOT=/work/runs experiments/evidence2.sh          # runs, then writes ROOT/*/report
#   ROOT=/work/runs PART=front-weights experiments/evidence2.sh   # one part: cbf, front, front-weights,
#                                                                 # front-strided or report
# (front-weights and front-strided were called more and more2; those names still work)
#
# Budgets (smaller than the paper's, to fit this machine; said in the write-up):
# - cbf: 1,000 generated training series of length 128, batch 32, 20 epochs (620 steps), the
#   1-D pre-activation ResNet of osuleaf.gin; shift consistency with shifts up to 16 samples.
# - translated_mnist: 4,000 digits on 56x56 canvases, 10 epochs (620 steps, a third of
#   translated_mnist.gin's), shift consistency with shifts up to 8 pixels; the front is made of
#   DiffStride with several complexity weights from good (1,2,2) and poor (4,2,2) strides, and
#   strided / spectral networks at several fixed strides.
set -euo pipefail
ROOT=${ROOT:-/tmp/diffstride-runs/evidence2}
SWEEP="python3 -m diffstride.experiments.sweep --jobs 1 --threads 1"

CBF=(--gin_config=osuleaf.gin
     "--gin_bindings=data.load_datasets.name = 'cbf'" "--gin_bindings=data.load_datasets.batch_size = 32"
     "--gin_bindings=train.train.num_epochs = 20"
     "--gin_bindings=tf.keras.optimizers.schedules.PiecewiseConstantDecay.boundaries = [20, 496]"
     "--gin_bindings=train.train.shift_consistency = 16" --root "$ROOT/cbf")
case "${PART:-all}" in more) PART=front-weights ;; more2) PART=front-strided ;; esac  # the parts' old names
part() { [ "${PART:-all}" = all ] || [ "${PART}" = "$1" ]; }

part cbf && $SWEEP "${CBF[@]}" --poolings DiffStride1d FixedSpectralPooling1d None --strides 1,2,2 4,2,2 --seeds 1 2 3

MNIST=(--gin_config=translated_mnist.gin
       "--gin_bindings=train.train.num_epochs = 10"
       "--gin_bindings=tf.keras.optimizers.schedules.PiecewiseConstantDecay.boundaries = [20, 496]"
       "--gin_bindings=train.train.shift_consistency = 8" "--gin_bindings=train.train.checkpoint_every_minutes = 3")
# the three poolings at good and poor strides (shift consistency with intervals)
part front && $SWEEP "${MNIST[@]}" --root "$ROOT/front" --poolings DiffStride FixedSpectralPooling None \
    --strides 1,2,2 4,2,2 --seeds 1 2
# more points of the fronts, in a root of their own (so that PART=front-weights can run beside
# PART=front): DiffStride along its complexity weight from both starts, spectral at other strides.
# (The roots keep their first names, front-more and front-more2, so that a grid started then resumes.)
if part front-weights; then
    $SWEEP "${MNIST[@]}" --root "$ROOT/front-more" --poolings DiffStride --strides 1,2,2 4,2,2 \
        --complexity_weights 1 3 --seeds 1 2
    $SWEEP "${MNIST[@]}" --root "$ROOT/front-more" --poolings FixedSpectralPooling --strides 2,2,2 2,2,1 --seeds 1 2
fi
# the strided networks' extra points, in a third root (so that it can run beside PART=front-weights)
part front-strided && $SWEEP "${MNIST[@]}" --root "$ROOT/front-more2" --poolings None --strides 2,2,2 2,2,1 --seeds 1 2
# one report of every finished translated-MNIST run of both roots
part report && python3 -m diffstride.experiments.report "$ROOT"/front/*-seed* "$ROOT"/front-more/*-seed* "$ROOT"/front-more2/*-seed* \
    --out "$ROOT/front-report" --reference_strides "1, 2, 2"
