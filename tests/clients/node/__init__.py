"""bwmon-node (clients/node) against real node servers and a real daemon."""
