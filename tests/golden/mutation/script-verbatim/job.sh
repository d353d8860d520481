#!/bin/bash
#SBATCH --partition=short
#SBATCH --time=00:10:00
module load python/3.11
srun python3 -c 'print("hello")'
