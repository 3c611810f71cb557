"""Response caching: exact and semantic lookups, memory and Redis stores, near-miss guards."""
