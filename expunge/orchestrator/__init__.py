"""Erasure requests, policy, planning and unlearning actions (built on `expunge.lineage`)."""
