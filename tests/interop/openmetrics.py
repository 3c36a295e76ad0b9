"""Reads an OpenMetrics text exposition on stdin with the Prometheus Python
client's parser, which refuses anything outside the format (a counter
sample without _total, histogram buckets out of order or without +Inf, a
missing # EOF, ...). Prints one sample a line: name{label="value",...}
(labels sorted), a tab, the value."""

import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        key = f"{sample.name}{{{labels}}}" if labels else sample.name
        print(f"{key}\t{family.type}\t{sample.value!r}")
