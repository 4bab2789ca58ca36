"""Services from WHMCS (issue 14): which WHMCS service owns which tenant, extension and DID, and since when.

- `records`: one WHMCS service as GetClientsProducts returns it, normalised (pure).
- `parsers`: one pure parser per PBX kind, following the ictVoIP field formats (seeds 001).
- `build`: the mapping of one sync: services, their claims, and the conflicts (pure).
- `history`: the claims over time in the ledger (`service_claims`), and who owned a number when.
"""
