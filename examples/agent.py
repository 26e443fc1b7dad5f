"""An agent loop with the official `openai` client against `corral serve`: the model calls two local Python
functions until it can answer.

    corral serve &                           # the default model on http://127.0.0.1:8000
    python examples/agent.py "What is the weather in Oslo, and what time is it there?"
    python examples/agent.py --base-url http://host:8000/v1 --first required "..."

Each round sends the conversation and the two tools; every call the model makes (several at once when it asks
for them in parallel) is run here and its result goes back as a `tool` message with the call's id; the loop ends
when an answer holds no call, or after `--rounds`. A call always parses (corral constrains it to the function's
JSON schema), so the loop never needs a retry or a repair step.

`--first required` forces a call in the first round. SmolLM2-135M, the default model, was not trained to use tools
and in `auto` mode answers in prose; a tool-trained model (Llama 3.1 Instruct, or one fine-tuned with
`corral finetune` on tool-call rows) decides for itself with the default `--first auto`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta

from openai import OpenAI

CITIES = {"oslo": (1, "4 C, light snow"), "lima": (-5, "19 C, overcast"), "tokyo": (9, "11 C, clear"),
          "paris": (1, "8 C, rain"), "nairobi": (3, "24 C, sunny")}


def get_weather(city: str) -> str:
    """Today's weather in a city (an invented table: the point is the loop, not the data)."""
    hit = CITIES.get(city.strip().lower())
    return hit[1] if hit else f"no weather station for {city!r}; known: {', '.join(CITIES)}"


def local_time(city: str) -> str:
    """The local time in a city, from its UTC offset."""
    hit = CITIES.get(city.strip().lower())
    if not hit:
        return f"unknown city {city!r}; known: {', '.join(CITIES)}"
    return (datetime.now(UTC) + timedelta(hours=hit[0])).strftime("%H:%M")


FUNCTIONS = {"get_weather": get_weather, "local_time": local_time}
TOOLS = [{"type": "function", "function": {
    "name": name, "description": fn.__doc__,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 60}},
                   "required": ["city"]}}} for name, fn in FUNCTIONS.items()]


def run(client: OpenAI, model: str, question: str, first: str = "auto", rounds: int = 4,
        max_tokens: int = 200) -> list[dict]:
    """The conversation after the loop: the question, each round's calls and results, the final answer."""
    messages: list[dict] = [{"role": "user", "content": question}]
    for k in range(rounds):
        r = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0,
                                           tool_choice=first if k == 0 else "auto", max_tokens=max_tokens)
        msg = r.choices[0].message
        calls = msg.tool_calls or []
        messages.append({"role": "assistant", "content": msg.content,
                         **({"tool_calls": [c.model_dump() for c in calls]} if calls else {})})
        if not calls:
            print(f"assistant> {msg.content}")
            break
        for c in calls:
            args = json.loads(c.function.arguments)  # always JSON valid against the function's schema
            result = FUNCTIONS[c.function.name](**args)
            print(f"call> {c.function.name}({c.function.arguments}) -> {result}")
            messages.append({"role": "tool", "tool_call_id": c.id, "content": result})
    return messages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("question", nargs="?", default="What is the weather in Oslo, and what time is it there?")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    p.add_argument("--model", default="default")
    p.add_argument("--first", choices=("auto", "required"), default="auto",
                   help="tool_choice of the first round (required: force a call)")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    print(f"user> {args.question}")
    run(client, args.model, args.question, args.first, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
