"""Deep RL with Assistant-prioritised replay (paper E): SAC with DenseNet MLPs and OFENet,
uniform / prioritized / Assistant replay, and Ape-X-style actor processes.

Needs the ``rl`` extra (gymnasium, mujoco). Import the parts you need, e.g.
``from autoassist.rl.train import RLConfig, train``; nothing here imports gymnasium until an
environment is made.
"""
