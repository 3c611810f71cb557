"""Response caching: exact and semantic lookups, memory and Redis stores, the canonical form a
query is compared in, and the near-miss guards."""
