"""The simulator's pure parts (the plan); the I/O is callboard/simulate.py."""
