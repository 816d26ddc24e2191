"""Federated kelm on Flower: clients train through kelm's engine on their own part of the data,
the server aggregates their updates (FedAvg, FedProx, FedE for embedding tables)."""
