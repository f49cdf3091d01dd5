# Scrapes a Prometheus endpoint and parses it with the Prometheus project's own
# Python parsers (Debian's python3-prometheus-client): the text format, or with
# "openmetrics" OpenMetrics, whose parser is strict (# EOF, suffixes, units).
# A line either parser refuses fails the scrape. Prints JSON.
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

url, form = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url)
if form == "openmetrics":
    request.add_header("Accept", "application/openmetrics-text; version=1.0.0")
# No proxy: the endpoint is on loopback or a test's own guest.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(request, timeout=20) as response:
    content_type = response.headers.get("Content-Type", "")
    body = response.read().decode("utf-8")
parse = parse_openmetrics if form == "openmetrics" else parse_text
families = [
    {
        "name": family.name,
        "type": family.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples],
    }
    for family in parse(body)
]
json.dump({"content_type": content_type, "families": families}, sys.stdout)
