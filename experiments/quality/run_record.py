"""The quality benchmark's record: every finished run, one JSON line each, appended as it
finishes, so an interrupted benchmark resumes where it stopped."""

import json
import os
from typing import Dict


class Record:
  """``runs.jsonl``: one line per finished run, ``{'stage', 'model', 'recipe', 'study',
  'overrides', 'results'}``; the source of every table."""

  def __init__(self, folder: str):
    os.makedirs(folder, exist_ok=True)
    self.path = os.path.join(folder, 'runs.jsonl')
    self.rows: Dict[str, dict] = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          if line.strip():
            row = json.loads(line)
            self.rows[row['id']] = row

  def add(self, row: dict) -> None:
    self.rows[row['id']] = row
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
