# Sourced by scripts/make_v2.sh and scripts/make_v3.sh: the imagery of the v2-protocol releases.
# Training rasters (bottom 25 % rows held out); Accra (S2 L2A, Ghana) and the eo-learn scenes are held out entirely.
DATA=${DATA:-../shared/data}
W=$DATA/s2_world
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
TRAIN=(--data $DATA/s2
       --data $W/s2_l1c_denmark_T33UUB_20170527_10m.tif:s2-rgbn
       --data $W/s2_l1c_sharkbay_T49JGM_20171022_10m.tif:s2-rgbn
       --data $W/s2_l2a_limassol_T36SVD_20240805_10m.tif:s2-l2a-7scl:10000:1000
       --data $DATA/naip:naip:moments)
HELD=(--val-npy $DATA/s2/s2_l1c_reference_scenes.npy
      --val-scene $W/s2_l2a_accra_T30NZM_20240407_10m.tif:s2-l2a-7scl:10000:1000)
