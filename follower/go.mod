module hpc-offload/follower

go 1.22
