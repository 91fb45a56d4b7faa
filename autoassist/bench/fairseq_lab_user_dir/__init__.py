"""Holds the laboratory's fairseq ``--user-dir`` package alone (the random-subset control)."""
