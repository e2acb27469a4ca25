"""A stand-in of NVIDIA's CUDA apt repository for host tests: packages under NVIDIA's names and
versions, built with dpkg-deb, indexed and signed with a test key (see standins.py)."""
