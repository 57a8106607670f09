"""Behind the NAT: which device models sit on a subscriber line, from the flows an ISP edge sees.

The pre-NAT archives are the ground truth. From them, and from the lines file
(`membership`: which devices sit on which line, from when), this package builds

- **line views** (`views`): what the ISP's edge collector would record for a subscriber
  line: the Internet-bound flows of the devices behind it, with every device identifier
  gone (no MAC, no LAN address, no device port: the NAT rewrote them), packet-sampled 1:N;
- **endpoint signatures** (`signatures`): per device model, the backend services (remote
  /24 or /48 prefix + port + protocol, and the prefix alone) that it alone used in the
  training days; services several models of one manufacturer (`manufacturers`) share
  become manufacturer rules; services models of different manufacturers share (CDNs,
  public resolvers, clouds) and the infrastructure ports (DNS, NTP) are no evidence at all;
- **line inventories** (`evidence`): per line and day, the models (or manufacturers) whose
  rules the line's flows hit within a sliding window of days, with evidence and the time
  of detection;
- **metrics** (`evaluation`) against the known membership: device-day recall, precision,
  false presences per line and month, time to detect.

Plain functions on pandas frames: no Dagster, no paths. The modules' public names are
re-exported here, so callers write `from iot_assets.core import subscriber_lines as lines`
and `lines.line_views(...)`.
"""

from iot_assets.core.subscriber_lines.evaluation import (
    evaluate,
    evaluate_hits,
    evaluate_units,
    in_episodes,
)
from iot_assets.core.subscriber_lines.evidence import (
    HIT_COLUMNS,
    INVENTORY_COLUMNS,
    MATCHED_COLUMNS,
    UNIT_COLUMNS,
    evidence_units,
    evidence_units_of,
    first_detected,
    inventory,
    inventory_changes,
    inventory_from_units,
    rule_hits,
)
from iot_assets.core.subscriber_lines.manufacturers import (
    MANUFACTURERS,
    manufacturer_of,
)
from iot_assets.core.subscriber_lines.membership import (
    MAC_PATTERN,
    MEMBERSHIP_COLUMNS,
    LinesInputError,
    line_key,
    line_shards,
    parse_membership,
    shard_membership,
    synthetic_lines,
)
from iot_assets.core.subscriber_lines.signatures import (
    ANY,
    INFRASTRUCTURE_PORTS,
    OBSERVATION_COLUMNS,
    SIGNATURE_COLUMNS,
    SignatureParams,
    day_strings,
    known_models,
    learn_signatures,
    outside_episodes,
    remote_prefix,
    service_observations,
    signatures_from_observations,
    signatures_version,
)
from iot_assets.core.subscriber_lines.views import (
    CLEAN_COLUMNS,
    DEFAULT_SAMPLING_RATES,
    TRUTH_COLUMNS,
    VIEW_COLUMNS,
    VIEW_SOURCE_COLUMNS,
    LineViews,
    line_truth,
    line_views,
    parse_sampling_rates,
)

__all__ = [
    "evaluate", "evaluate_hits", "evaluate_units", "in_episodes",
    "HIT_COLUMNS", "INVENTORY_COLUMNS", "MATCHED_COLUMNS", "UNIT_COLUMNS", "evidence_units", "evidence_units_of",
    "first_detected", "inventory", "inventory_changes", "inventory_from_units", "rule_hits",
    "MANUFACTURERS", "manufacturer_of",
    "MAC_PATTERN", "MEMBERSHIP_COLUMNS", "LinesInputError", "line_key", "line_shards", "parse_membership",
    "shard_membership", "synthetic_lines",
    "ANY", "INFRASTRUCTURE_PORTS", "OBSERVATION_COLUMNS", "SIGNATURE_COLUMNS", "SignatureParams", "day_strings",
    "known_models", "learn_signatures", "outside_episodes", "remote_prefix", "service_observations",
    "signatures_from_observations", "signatures_version",
    "CLEAN_COLUMNS", "DEFAULT_SAMPLING_RATES", "TRUTH_COLUMNS", "VIEW_COLUMNS", "VIEW_SOURCE_COLUMNS", "LineViews",
    "line_truth", "line_views", "parse_sampling_rates",
]
