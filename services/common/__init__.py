"""Pieces every stage shares: errors, sampling parameters, configuration, gRPC and metrics helpers."""
