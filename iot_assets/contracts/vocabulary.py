"""Words the tables share: where a flow's remote end is, and the kinds of incident."""

# Where the remote end of a device's flow sits, as cleaning names it.
REMOTE_SCOPES = ("gateway", "lan", "internet", "broadcast", "multicast", "link_local", "unspecified")

# The kinds an incident is given, in the order their rules are tried (core.incidents).
KIND_RULES = ("scan-like", "flood-like", "service-mix", "new-endpoint", "volume", "other")
