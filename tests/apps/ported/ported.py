"""A fal app ported to falrt: the code is fal's (docs/porting-from-fal.md), but the import.

`import fal` became `import falrt as fal`; nothing else changed. It reads a config file in
`setup()` through `app_files`, sets `retry_config` in fal's form and serves a realtime
endpoint declared with `@fal.realtime`.
"""

import json
from pathlib import Path

from pydantic import BaseModel

import falrt as fal


class Input(BaseModel):
    prompt: str


class Output(BaseModel):
    result: str


class Ported(fal.App, keep_alive=300, max_concurrency=1):
    app_name = "ported"
    max_multiplexing = 2
    retry_config = {"timeout": {"retries": 0}, "server_error": {"retries": 2}}
    app_files = ["config.json", "prompts"]
    app_files_ignore = [r"\.draft$"]

    def setup(self) -> None:
        with open("config.json") as f:
            self.config = json.load(f)
        self.greeting = Path("prompts/greeting.txt").read_text().strip()
        self.drafts = sorted(p.name for p in Path("prompts").glob("*.draft"))

    @fal.endpoint("/")
    def generate(self, input: Input) -> Output:
        drafts = ",".join(self.drafts) or "none"
        return Output(result=f"{self.greeting} {input.prompt}{self.config['suffix']} "
                             f"(drafts: {drafts})")

    @fal.realtime("/realtime")
    def generate_realtime(self, input: Input) -> Output:
        return Output(result=input.prompt.upper() + self.config["suffix"])
