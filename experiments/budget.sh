#!/usr/bin/env bash
# Equal compute, asked for (issue "budget"): translated MNIST, DiffStride trained to budgets equal to
# the strided and spectral networks' multiply-adds at their stride settings, at smoothness R = 4 and
# R = 1, beside the strided and spectral networks. The set-up of evidence2.sh's front (4,000 digits
# on 56x56 canvases, 10 epochs, 620 steps, shift consistency up to 8 pixels); DiffStride starts from
# the good strides (1, 2, 2) and its budget decides where they go. Seed-major order, so that an
# interrupted grid has whole seeds; resumable: run it again and finished cells are skipped.
#
#   ROOT=/work/runs experiments/budget.sh                 # the grid, 2 cells at a time, one thread each
#   ROOT=/work/runs PART=report experiments/budget.sh     # the report (with evidence2's seeds 1-2 of the fixed networks)
#
# Budgets (multiply-adds per example, measured by evidence2.sh's runs): strided (1,2,2) 22.93 M,
# (2,2,1) 14.16 M, (2,2,2) 5.73 M, (4,2,2) 1.65 M; spectral (2,2,1) 17.51 M, (2,2,2) 11.84 M,
# (4,2,2) 2.92 M. The floors (diffstride.complexity.floor): 7.62 M at R = 4, 1.60 M at R = 1: R = 4
# gets the four levels above its floor, R = 1 four from 14.16 M down to the lowest.
set -euo pipefail
ROOT=${ROOT:-/tmp/diffstride-runs/budget}
JOBS=${JOBS:-2}
SWEEP="python3 -m diffstride.experiments.sweep --jobs $JOBS --threads 1"
MNIST=(--gin_config=translated_mnist.gin
       "--gin_bindings=train.train.num_epochs = 10"
       "--gin_bindings=tf.keras.optimizers.schedules.PiecewiseConstantDecay.boundaries = [20, 496]"
       "--gin_bindings=train.train.shift_consistency = 8" "--gin_bindings=train.train.checkpoint_every_minutes = 3")
part() { [ "${PART:-all}" = all ] || [ "${PART}" = "$1" ]; }
if part grid; then
    for seed in 1 2 3; do
        $SWEEP "${MNIST[@]}" --root "$ROOT/R4" --poolings DiffStride --strides 1,2,2 --seeds $seed \
            --budgets 22930000 17510000 14160000 11840000
        $SWEEP "${MNIST[@]}" "--gin_bindings=pooling.DiffStride.smoothness_factor = 1.0" --root "$ROOT/R1" \
            --poolings DiffStride --strides 1,2,2 --seeds $seed --budgets 14160000 5730000 2920000 1650000
    done
    # the fixed networks' third seed (seeds 1 and 2: experiments/translated_mnist_front, evidence2.sh)
    $SWEEP "${MNIST[@]}" --root "$ROOT/fixed" --poolings FixedSpectralPooling None \
        --strides 1,2,2 2,2,1 2,2,2 4,2,2 --seeds 3
fi
part report && python3 -m diffstride.experiments.report "$ROOT"/R4/*-seed* "$ROOT"/R1/*-seed* "$ROOT"/fixed/*-seed* \
    experiments/translated_mnist_front/{strided,FixedSpectralPooling}-* --out "$ROOT/report" --reference_strides "1, 2, 2"
