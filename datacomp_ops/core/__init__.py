"""The core every phase shares: the config, storage, the layout of data on storage, table schemas,
the ledger, stage statistics, pool versions and their leases, and the address guard."""
