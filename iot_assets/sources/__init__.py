"""Readers for what flow collectors write: nfcapd files (nfdump) and IPFIX files (RFC 5655)."""
