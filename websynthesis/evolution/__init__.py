"""WebEvolver's self-improvement: imagined trajectories for the co-evolution rounds."""
