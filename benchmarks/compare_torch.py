"""Head-to-head against PyTorch; see ``bptt_numba._bench`` (also ``bptt-numba bench``)."""

from bptt_numba._bench import main

if __name__ == "__main__":
    main()
