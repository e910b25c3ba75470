#!/bin/sh
# Every GPU benchmark, one after the other, each measuring its stock baseline in the same process.
# About 35 minutes on one H100. JSON results go to $OUT when it is set.
set -e
cd "$(dirname "$0")"
python3 wan_step.py --sizes 480p
python3 wan_step.py --sizes 720p --no-fp32 --reps 1 --rows stock,fa3,fa3+compile,fp8
python3 attention_kernels.py
python3 block_profile.py --sizes 480p,720p --reps 9
python3 swap_budget.py
python3 stages.py
python3 e2e_recipe.py
python3 two_pass.py
