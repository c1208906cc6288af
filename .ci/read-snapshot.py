"""Reads a published snapshot from a local store with pyarrow alone: follows COMPANY/latest.json
to the manifest, opens one data type's Parquet file, prints its schema, row count, the sum of its
money column totalAmount (exact decimals) against the manifest's control total, and five rows.
Usage: read-snapshot.py STORE_FOLDER COMPANY DATA_TYPE"""
import json
import sys
from decimal import Decimal

import pyarrow.compute as pc
import pyarrow.parquet as pq

store, company, data_type = sys.argv[1:4]
latest = json.load(open(f"{store}/{company}/latest.json"))
manifest = json.load(open(f"{store}/{latest['manifestKey']}"))
entry = manifest["dataTypes"][data_type]
table = pq.read_table(f"{store}/{entry['key']}")
print(f"snapshot {manifest['snapshotId']} of {manifest['source']['companyName']}: {entry['key']}")
print(f"{table.num_rows} rows (manifest: {entry['rows']}); columns:")
for field in table.schema:
    print(f"  {field.name}: {field.type}")
if "totalAmount" in table.column_names:
    live = table.filter(pc.invert(table["isDeleted"]))
    total = sum((v or Decimal(0)) for v in live["totalAmount"].to_pylist())
    print(f"sum of totalAmount over live records: {total} (manifest control total: "
          f"{entry['controlTotals']['sums']['totalAmount']})")
cols = [c for c in ("id", "invoiceNumber", "issueDate", "status", "totalAmount", "amountDue") if c in table.column_names]
for row in table.select(cols).slice(0, 5).to_pylist():
    print("  ", row)
