"""Holds the fairseq ``--user-dir`` package alone: fairseq puts this folder on ``sys.path``."""
