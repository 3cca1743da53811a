"""Models built from minipt's blocks, each in one file that reads like its paper."""
