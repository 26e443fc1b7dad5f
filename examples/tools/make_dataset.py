"""Build the Pedalwick tool-calling example: tools.json, train.jsonl and eval.jsonl.

Pedalwick is an invented bike-sharing and repair business in the invented city of Ambervale. Its assistant has nine
functions (TOOLS below). Training rows are drawn from hand-written question templates filled with seeded random ids,
dates, amounts and names; the held-out eval rows (EVAL below) are written out one by one, and the training sampler
never uses an id, date, name or number that appears in them, nor an argument set an eval answer would accept.

    python examples/tools/make_dataset.py          # rewrites the three files; deterministic (fixed seeds)
    python examples/tools/check_sets.py            # checks them
"""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_SEED = 4821
EVAL_SEED = 7093

# --- the functions ----------------------------------------------------------------------------------------------

DATE = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
STATION = {"type": "string", "pattern": "^ST-[0-9]{3}$",
           "description": "Station id: 'ST-' plus the three-digit station number (station 102 is ST-102)."}
MEMBER = {"type": "string", "pattern": "^MB-[0-9]{5}$", "description": "Member id: 'MB-' plus five digits."}
BIKE_TYPE = {"type": "string", "enum": ["classic", "electric", "cargo"],
             "description": "classic (regular pedal bike), electric (e-bike) or cargo."}
DISTRICTS = ["old_town", "riverside", "north_hill", "harbour", "university", "east_market"]
WORKSHOPS = ["old_town", "riverside", "north_hill"]
SERVICES = ["tune_up", "flat_repair", "brake_service", "gear_service", "full_service", "ebike_check"]
ISSUES = ["flat_tire", "brakes", "chain", "lights", "battery", "other"]


def _fn(name, description, properties, required):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


TOOLS = [
    _fn("get_station_status", "Get how many bikes of each type are parked at one docking station.", {
        "station_id": STATION,
        "include_docks": {"type": "boolean", "default": False,
                          "description": "Also return the number of free docks (space to return a bike)."},
    }, ["station_id"]),
    _fn("find_stations", "List the docking stations in a district that have bikes available.", {
        "district": {"type": "string", "enum": DISTRICTS, "description": "District of Ambervale."},
        "bike_type": {"type": "string", "enum": ["any", "classic", "electric", "cargo"], "default": "any",
                      "description": "Only count this type: classic (regular pedal bike), electric (e-bike), cargo."},
        "min_bikes": {"type": "integer", "minimum": 1, "default": 1,
                      "description": "Only stations with at least this many matching bikes."},
    }, ["district"]),
    _fn("reserve_bike", "Hold a shared bike at a station for a member so nobody else takes it.", {
        "station_id": STATION,
        "member_id": MEMBER,
        "bike_type": BIKE_TYPE,
        "hold_minutes": {"type": "integer", "minimum": 5, "maximum": 30, "default": 10,
                         "description": "How long to hold the bike, 5 to 30 minutes."},
    }, ["station_id", "member_id", "bike_type"]),
    _fn("get_ride_history", "List a member's past rides between two dates (both included), newest first.", {
        "member_id": MEMBER,
        "start_date": {**DATE, "description": "First day, YYYY-MM-DD."},
        "end_date": {**DATE, "description": "Last day, YYYY-MM-DD."},
        "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10,
                  "description": "Maximum number of rides to return."},
    }, ["member_id", "start_date", "end_date"]),
    _fn("estimate_fare", "Estimate the price of one ride from the bike type and the ride's length.", {
        "bike_type": BIKE_TYPE,
        "duration_minutes": {"type": "integer", "minimum": 1, "description": "Ride length in minutes."},
        "member": {"type": "boolean", "default": False, "description": "Apply the member discount."},
    }, ["bike_type", "duration_minutes"]),
    _fn("top_up_wallet", "Add money to a member's ride wallet.", {
        "member_id": MEMBER,
        "amount_eur": {"type": "number", "minimum": 5, "maximum": 200, "description": "Amount in euros, 5 to 200."},
        "payment_method": {"type": "string", "enum": ["card", "paypal", "bank_transfer"], "default": "card",
                           "description": "How the top-up is paid."},
    }, ["member_id", "amount_eur"]),
    _fn("report_bike_issue", "Report a fault on a shared (rental) bike so the crew collects it.", {
        "bike_id": {"type": "string", "pattern": "^BK-[0-9]{4}$",
                    "description": "Shared bike id: 'BK-' plus the four-digit bike number (bike 4821 is BK-4821)."},
        "issue_type": {"type": "string", "enum": ISSUES,
                       "description": "What is wrong: flat_tire (puncture), brakes, chain, lights, battery (e-bike) "
                                      "or other."},
        "station_id": {**STATION, "description": "Station where the bike is parked, if the user says. " +
                       STATION["description"]},
        "urgent": {"type": "boolean", "default": False, "description": "Only if the user asks for urgent handling."},
    }, ["bike_id", "issue_type"]),
    _fn("book_repair", "Book a workshop appointment to repair a customer's own bike.", {
        "workshop": {"type": "string", "enum": WORKSHOPS, "description": "Which Pedalwick workshop."},
        "date": {**DATE, "description": "Appointment day, YYYY-MM-DD."},
        "service": {"type": "string", "enum": SERVICES,
                    "description": "tune_up, flat_repair (puncture), brake_service (brakes), gear_service "
                                   "(gears), full_service, ebike_check (e-bike motor and battery)."},
        "customer_name": {"type": "string", "description": "The customer's full name."},
        "express": {"type": "boolean", "default": False, "description": "Same-day express service (extra fee)."},
    }, ["workshop", "date", "service", "customer_name"]),
    _fn("get_repair_status", "Check the progress of a workshop repair.", {
        "ticket_id": {"type": "string", "pattern": "^RP-[0-9]{4}$",
                      "description": "Repair ticket id: 'RP-' plus four digits."},
    }, ["ticket_id"]),
]
TOOL = {t["function"]["name"]: t for t in TOOLS}
NAMES = list(TOOL)
# Functions a model could confuse: "multiple" rows offer the whole family of the function they need, "simple" rows
# offer no other member of it.
FAMILIES = [("get_station_status", "find_stations", "reserve_bike"),
            ("get_ride_history", "estimate_fare", "top_up_wallet"),
            ("report_bike_issue", "book_repair", "get_repair_status")]
FAMILY = {n: fam for fam in FAMILIES for n in fam}


def props(name):
    return TOOL[name]["function"]["parameters"]["properties"]


def required(name):
    return TOOL[name]["function"]["parameters"]["required"]


# --- the held-out eval set (written by hand) --------------------------------------------------------------------


def X(name, **given):
    """An expected call: every parameter of `name` mapped to its acceptable values. A parameter the question does not
    state may be omitted ("") or given its default; one stated as its default value may be omitted too."""
    out = {}
    for p, spec in props(name).items():
        if p in given:
            vals = given[p] if isinstance(given[p], list) else [given[p]]
            if "default" in spec and spec["default"] in vals and "" not in vals:
                vals = [*vals, ""]
        elif p in required(name):
            raise ValueError(f"{name}: required {p} missing")
        else:
            vals = [spec["default"], ""] if "default" in spec else [""]
        out[p] = vals
    return {"name": name, "arguments": out}


S, M, P, N = "simple", "multiple", "parallel", "irrelevance"
EVAL = [
    # simple: one obvious function among unrelated ones
    (S, "Could you tell me what's parked at ST-318 right now?", [X("get_station_status", station_id="ST-318")]),
    (S, "I need to drop off my bike at station 527. Are there any empty slots there?",
     [X("get_station_status", station_id="ST-527", include_docks=True)]),
    (S, "bikes left at st-064??", [X("get_station_status", station_id="ST-064")]),
    (S, "How many bikes does station 219 have, and how many free docks?",
     [X("get_station_status", station_id="ST-219", include_docks=True)]),
    (S, "Which stations on North Hill have a cargo bike available?",
     [X("find_stations", district="north_hill", bike_type="cargo")]),
    (S, "Looking for a station in East Market with at least 4 bikes, any kind is fine.",
     [X("find_stations", district="east_market", min_bikes=4, bike_type=["any", ""])]),
    (S, "where in the university district can i grab an ebike",
     [X("find_stations", district="university", bike_type="electric")]),
    (S, "Show me Harbour stations that have 6 or more e-bikes.",
     [X("find_stations", district="harbour", bike_type="electric", min_bikes=6)]),
    (S, "Could a cargo bike at ST-743 be kept back for me? Member MB-60218.",
     [X("reserve_bike", station_id="ST-743", member_id="MB-60218", bike_type="cargo")]),
    (S, "Member MB-27745 here: I need an e-bike at station 156 set aside for 18 minutes.",
     [X("reserve_bike", station_id="ST-156", member_id="MB-27745", bike_type="electric", hold_minutes=18)]),
    (S, "Can you put a regular bike on hold at ST-289 for MB-83016?",
     [X("reserve_bike", station_id="ST-289", member_id="MB-83016", bike_type="classic")]),
    (S, "Show the rides on account MB-40592 from 2025-02-10 through 2025-02-16.",
     [X("get_ride_history", member_id="MB-40592", start_date="2025-02-10", end_date="2025-02-16")]),
    (S, "What trips did MB-11873 take in September 2024? Only the 4 most recent, please.",
     [X("get_ride_history", member_id="MB-11873", start_date="2024-09-01", end_date="2024-09-30", limit=4)]),
    (S, "List my rides between 3 November 2025 and 9 November 2025. I'm MB-95530.",
     [X("get_ride_history", member_id="MB-95530", start_date="2025-11-03", end_date="2025-11-09")]),
    (S, "Roughly what would 35 minutes on an e-bike set me back?",
     [X("estimate_fare", bike_type="electric", duration_minutes=35)]),
    (S, "I have a membership. Price for a cargo bike for an hour and a quarter?",
     [X("estimate_fare", bike_type="cargo", duration_minutes=75, member=True)]),
    (S, "fare for a classic bike, 50 min", [X("estimate_fare", bike_type="classic", duration_minutes=50)]),
    (S, "Add €35 to the wallet of MB-72094.", [X("top_up_wallet", member_id="MB-72094", amount_eur=35)]),
    (S, "Please load 17.50 euros onto MB-18462 using PayPal.",
     [X("top_up_wallet", member_id="MB-18462", amount_eur=17.5, payment_method="paypal")]),
    (S, "Top up MB-50327 by forty-five euros via bank transfer.",
     [X("top_up_wallet", member_id="MB-50327", amount_eur=45, payment_method="bank_transfer")]),
    (S, "The shared bike BK-7093 I just took has a chain that keeps slipping off.",
     [X("report_bike_issue", bike_id="BK-7093", issue_type="chain")]),
    (S, "Bike 3158 at station 402: its headlight is dead.",
     [X("report_bike_issue", bike_id="BK-3158", issue_type="lights", station_id="ST-402")]),
    (S, "Please flag BK-6624 as urgent, the e-bike's battery died completely.",
     [X("report_bike_issue", bike_id="BK-6624", issue_type="battery", urgent=True)]),
    (S, "I'd like a full service for my own bike at the Riverside workshop on 22 April 2026. Name: Ilse Marchetti.",
     [X("book_repair", workshop="riverside", date="2026-04-22", service="full_service",
        customer_name="Ilse Marchetti")]),
    (S, "Book Tobias Wennberg in at North Hill on 2025-12-03 to sort out the gears on his bike, express please.",
     [X("book_repair", workshop="north_hill", date="2025-12-03", service="gear_service",
        customer_name="Tobias Wennberg", express=True)]),
    (S, "Can the Old Town workshop fix a puncture on my bike on Friday 5 June 2026? I'm Adaeze Kowalczyk.",
     [X("book_repair", workshop="old_town", date="2026-06-05", service="flat_repair",
        customer_name="Adaeze Kowalczyk")]),
    (S, "Any news on repair ticket RP-8307?", [X("get_repair_status", ticket_id="RP-8307")]),
    (S, "is RP-1942 done yet", [X("get_repair_status", ticket_id="RP-1942")]),
    (S, "Where's my bike at? Ticket number RP-6058.", [X("get_repair_status", ticket_id="RP-6058")]),
    (S, "How much for a 100-minute ride on a classic bike if I have a membership?",
     [X("estimate_fare", bike_type="classic", duration_minutes=100, member=True)]),
    # multiple: the function's look-alikes are offered too
    (M, "Are there any e-bikes free around Old Town at the moment?",
     [X("find_stations", district="old_town", bike_type="electric")]),
    (M, "What can I pick up at ST-461?", [X("get_station_status", station_id="ST-461")]),
    (M, "Grab me a cargo bike at ST-205 for 22 minutes, member MB-36691.",
     [X("reserve_bike", station_id="ST-205", member_id="MB-36691", bike_type="cargo", hold_minutes=22)]),
    (M, "The brakes on my own bike are rubbing. Can I bring it to the Old Town workshop on 2025-10-14? "
        "It's Priya Lindqvist.",
     [X("book_repair", workshop="old_town", date="2025-10-14", service="brake_service",
        customer_name="Priya Lindqvist")]),
    (M, "Rental bike BK-2590 has a flat tyre.", [X("report_bike_issue", bike_id="BK-2590", issue_type="flat_tire")]),
    (M, "Has the workshop finished with RP-3376?", [X("get_repair_status", ticket_id="RP-3376")]),
    (M, "25 minutes on an electric bike: how much will that cost me?",
     [X("estimate_fare", bike_type="electric", duration_minutes=25)]),
    (M, "Show MB-22908's rides from 1 to 15 January 2026.",
     [X("get_ride_history", member_id="MB-22908", start_date="2026-01-01", end_date="2026-01-15")]),
    (M, "Put 90 euros in MB-44817's wallet.", [X("top_up_wallet", member_id="MB-44817", amount_eur=90)]),
    (M, "Is there room to park a bike at station 390?",
     [X("get_station_status", station_id="ST-390", include_docks=True)]),
    (M, "I found shared bike BK-8841 at ST-117 with broken lights.",
     [X("report_bike_issue", bike_id="BK-8841", issue_type="lights", station_id="ST-117")]),
    (M, "Book a motor and battery check for my own e-bike at North Hill on 2026-03-19, name Mateo Ferreira-Lunde.",
     [X("book_repair", workshop="north_hill", date="2026-03-19", service="ebike_check",
        customer_name="Mateo Ferreira-Lunde")]),
    (M, "The battery on BK-5127 won't charge.", [X("report_bike_issue", bike_id="BK-5127", issue_type="battery")]),
    (M, "What would a 70-minute cargo ride cost for a member?",
     [X("estimate_fare", bike_type="cargo", duration_minutes=70, member=True)]),
    (M, "I need a list of University district stations that have at least 7 classic bikes.",
     [X("find_stations", district="university", bike_type="classic", min_bikes=7)]),
    (M, "Hold an e-bike at ST-577 for me, I'm MB-19024.",
     [X("reserve_bike", station_id="ST-577", member_id="MB-19024", bike_type="electric")]),
    (M, "Could you look into ticket RP-7215 for me?", [X("get_repair_status", ticket_id="RP-7215")]),
    (M, "I'm MB-63350. Which rides did I do on 28 February 2025?",
     [X("get_ride_history", member_id="MB-63350", start_date="2025-02-28", end_date="2025-02-28")]),
    (M, "Charge my card 65 EUR and put it in the wallet of MB-81236.",
     [X("top_up_wallet", member_id="MB-81236", amount_eur=65, payment_method="card")]),
    (M, "Something is off with the gears on my own bike; can Riverside look at it on 11 August 2025? "
        "Name's Greta Holmqvist.",
     [X("book_repair", workshop="riverside", date="2025-08-11", service="gear_service",
        customer_name="Greta Holmqvist")]),
    (M, "Which Riverside stations have bikes right now?", [X("find_stations", district="riverside")]),
    (M, "BK-4096's bell is missing, it's parked at station 188.",
     [X("report_bike_issue", bike_id="BK-4096", issue_type="other", station_id="ST-188")]),
    (M, "How far along is my repair, RP-2764?", [X("get_repair_status", ticket_id="RP-2764")]),
    (M, "The battery of my own e-bike dies after a few kilometres. Can Old Town check it on 2025-11-21? "
        "Name: Dmitri Achterberg.",
     [X("book_repair", workshop="old_town", date="2025-11-21", service="ebike_check",
        customer_name="Dmitri Achterberg")]),
    (M, "What is a 55-minute classic ride going to cost?",
     [X("estimate_fare", bike_type="classic", duration_minutes=55)]),
    # parallel: two or three calls in one answer
    (P, "What's at stations 143 and 586 right now?",
     [X("get_station_status", station_id="ST-143"), X("get_station_status", station_id="ST-586")]),
    (P, "Where are my three repairs at: RP-5580, RP-9021, RP-3143?",
     [X("get_repair_status", ticket_id="RP-5580"), X("get_repair_status", ticket_id="RP-9021"),
      X("get_repair_status", ticket_id="RP-3143")]),
    (P, "Compare prices: 40 minutes on a classic bike versus 40 minutes on an e-bike.",
     [X("estimate_fare", bike_type="classic", duration_minutes=40),
      X("estimate_fare", bike_type="electric", duration_minutes=40)]),
    (P, "Any cargo bikes in the Harbour district or in East Market?",
     [X("find_stations", district="harbour", bike_type="cargo"),
      X("find_stations", district="east_market", bike_type="cargo")]),
    (P, "For MB-28461: put €32 in the wallet, and list the rides between 2025-07-01 and 2025-07-14.",
     [X("top_up_wallet", member_id="MB-28461", amount_eur=32),
      X("get_ride_history", member_id="MB-28461", start_date="2025-07-01", end_date="2025-07-14")]),
    (P, "Report BK-1379 for a flat tyre and BK-1380 for squeaky brakes.",
     [X("report_bike_issue", bike_id="BK-1379", issue_type="flat_tire"),
      X("report_bike_issue", bike_id="BK-1380", issue_type="brakes")]),
    (P, "What's the status of RP-4865, and how many bikes are at ST-432?",
     [X("get_repair_status", ticket_id="RP-4865"), X("get_station_status", station_id="ST-432")]),
    (P, "Reserve classic bikes at ST-350 for both MB-37719 and MB-37720.",
     [X("reserve_bike", station_id="ST-350", member_id="MB-37719", bike_type="classic"),
      X("reserve_bike", station_id="ST-350", member_id="MB-37720", bike_type="classic")]),
    (P, "Book Jonas Abernethy for a tune-up at Old Town on 2026-01-27, and check on ticket RP-6612.",
     [X("book_repair", workshop="old_town", date="2026-01-27", service="tune_up", customer_name="Jonas Abernethy"),
      X("get_repair_status", ticket_id="RP-6612")]),
    (P, "Two fares please: an e-bike for 75 minutes with the member discount, and a cargo bike for 35 minutes "
        "without it.",
     [X("estimate_fare", bike_type="electric", duration_minutes=75, member=True),
      X("estimate_fare", bike_type="cargo", duration_minutes=35, member=False)]),
    (P, "I'm after an e-bike. Look in North Hill, Riverside and the University district.",
     [X("find_stations", district="north_hill", bike_type="electric"),
      X("find_stations", district="riverside", bike_type="electric"),
      X("find_stations", district="university", bike_type="electric")]),
    (P, "do stations 169 and 274 have space for me to return a bike?",
     [X("get_station_status", station_id="ST-169", include_docks=True),
      X("get_station_status", station_id="ST-274", include_docks=True)]),
    (P, "Add 27.50 euros to MB-34025 and the same to MB-34026, both paid with PayPal.",
     [X("top_up_wallet", member_id="MB-34025", amount_eur=27.5, payment_method="paypal"),
      X("top_up_wallet", member_id="MB-34026", amount_eur=27.5, payment_method="paypal")]),
    (P, "BK-2208 at ST-119 has dead lights. Also, how much is a 33-minute classic ride?",
     [X("report_bike_issue", bike_id="BK-2208", issue_type="lights", station_id="ST-119"),
      X("estimate_fare", bike_type="classic", duration_minutes=33)]),
    (P, "Get the ride history of MB-46213 and of MB-46214, both for 1 to 31 October 2025.",
     [X("get_ride_history", member_id="MB-46213", start_date="2025-10-01", end_date="2025-10-31"),
      X("get_ride_history", member_id="MB-46214", start_date="2025-10-01", end_date="2025-10-31")]),
    (P, "Give me the bike counts for ST-752, ST-753 and ST-754.",
     [X("get_station_status", station_id="ST-752"), X("get_station_status", station_id="ST-753"),
      X("get_station_status", station_id="ST-754")]),
    (P, "Log shared bike BK-9902, its chain came off. And book a puncture repair for my own bike at Riverside on "
        "2025-09-09, name Ruth Okonkwo.",
     [X("report_bike_issue", bike_id="BK-9902", issue_type="chain"),
      X("book_repair", workshop="riverside", date="2025-09-09", service="flat_repair", customer_name="Ruth Okonkwo")]),
    (P, "Is there an e-bike to grab in Old Town, and what's the status of RP-1118?",
     [X("find_stations", district="old_town", bike_type="electric"), X("get_repair_status", ticket_id="RP-1118")]),
    (P, "Reserve a cargo bike at ST-234 for MB-55890 for 12 minutes, and estimate a 70-minute cargo ride "
        "without a membership.",
     [X("reserve_bike", station_id="ST-234", member_id="MB-55890", bike_type="cargo", hold_minutes=12),
      X("estimate_fare", bike_type="cargo", duration_minutes=70, member=False)]),
    (P, "Any progress on RP-3901 or RP-3902?",
     [X("get_repair_status", ticket_id="RP-3901"), X("get_repair_status", ticket_id="RP-3902")]),
    # irrelevance: no offered function answers it (the last five ask for a function this row does not offer)
    (N, "Good morning! How are you today?", []),
    (N, "What's the boiling point of water in Fahrenheit?", []),
    (N, "I no longer need the e-bike I put on hold, please release it.", []),
    (N, "I moved house. Can you change the postal address on my account?", []),
    (N, "Is it going to be windy along the harbour this afternoon?", []),
    (N, "Write me a short poem about cycling to work.", []),
    (N, "I was charged twice for one ride. Can you refund one of the charges?", []),
    (N, "How do I set the right saddle height on my bike?", []),
    (N, "Roughly how many calories does an hour of cycling burn?", []),
    (N, "Can you order me a new helmet?", []),
    (N, "When does the North Hill workshop open on Saturdays?", []),
    (N, "Please delete my member account MB-38075.", []),
    (N, "Translate 'bicycle' into Spanish.", []),
    (N, "That's everything, thanks for the help!", []),
    (N, "Am I allowed to bring my dog along in a cargo bike?", []),
    (N, "Move the whole balance of my wallet over to MB-61347.", []),
    (N, "Who won the Tour de France in 1989?", []),
    (N, "I'd like to speak to a human, please.", []),
    (N, "Recommend a nice café near the harbour.", []),
    (N, "What's the square root of 144?", []),
    (N, "Does station 491 have any bikes parked?", [], ["top_up_wallet", "book_repair", "get_repair_status"]),
    (N, "Please credit 40 euros to wallet MB-29950.", [], ["find_stations", "report_bike_issue", "estimate_fare"]),
    (N, "Shared bike BK-5736 has a flat tyre, please log it.", [],
     ["get_ride_history", "top_up_wallet", "get_station_status"]),
    (N, "Is repair RP-4432 finished?", [], ["estimate_fare", "reserve_bike", "find_stations"]),
    (N, "What does a 25-minute e-bike ride cost?", [], ["book_repair", "get_station_status", "get_repair_status"]),
]


def pick_tools(rng, category, needed):
    """The tools a row offers: always `needed`; for simple rows no look-alike of it, for multiple rows its family."""
    needed = list(dict.fromkeys(needed))
    if category == S:
        others = [n for n in NAMES if n not in FAMILY[needed[0]]]
        chosen = needed + rng.sample(others, rng.choice([1, 1, 2, 2, 3]))
    elif category == M:
        fam = list(FAMILY[needed[0]])
        others = [n for n in NAMES if n not in fam]
        chosen = fam + rng.sample(others, rng.choice([1, 2, 2, 3, 4, 6]))
    elif category == P:
        others = [n for n in NAMES if n not in needed]
        k = rng.choice([0, 1, 2, 2, 3, 4]) if len(needed) > 1 else rng.choice([1, 2, 3])
        chosen = needed + rng.sample(others, k)
    else:
        chosen = rng.sample(NAMES, rng.choice([2, 3, 3, 4, 5, 6, 9]))
    rng.shuffle(chosen)
    return [TOOL[n] for n in chosen]


def build_eval():
    rng = random.Random(EVAL_SEED)
    rows, counts = [], {}
    for item in EVAL:
        cat, question, expected = item[:3]
        counts[cat] = counts.get(cat, 0) + 1
        tools = [TOOL[n] for n in item[3]] if len(item) > 3 else pick_tools(rng, cat, [e["name"] for e in expected])
        rows.append({"id": f"{cat}-{counts[cat]:03d}", "category": cat, "tools": tools,
                     "messages": [{"role": "user", "content": question}], "expected": expected})
    return rows


def accepted_arg_sets(expected_call):
    """Every argument object (canonical JSON) an eval answer accepts for one expected call."""
    keys = list(expected_call["arguments"])
    out = set()
    for combo in itertools.product(*(expected_call["arguments"][k] for k in keys)):
        args = {k: v for k, v in zip(keys, combo, strict=True) if v != ""}
        out.add(canon(expected_call["name"], args))
    return out


def canon(name, args):
    return json.dumps([name, {k: args[k] for k in sorted(args)}])


# --- surface forms ----------------------------------------------------------------------------------------------

MONTHS = list(calendar.month_name)[1:]
WEEKDAYS = list(calendar.day_name)


def ordinal(n):
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def say_date(rng, d):
    m = MONTHS[d.month - 1]
    return rng.choice([d.isoformat(), d.isoformat(), f"{m} {d.day}, {d.year}", f"{d.day} {m} {d.year}",
                       f"{WEEKDAYS[d.weekday()]} {d.day} {m} {d.year}", f"{m} {ordinal(d.day)} {d.year}",
                       f"the {ordinal(d.day)} of {m} {d.year}", f"{m[:3]} {d.day} {d.year}"])


DISTRICT_SAY = {
    "old_town": ["Old Town", "the Old Town", "old town"],
    "riverside": ["Riverside", "the Riverside district", "riverside"],
    "north_hill": ["North Hill", "north hill", "the North Hill district"],
    "harbour": ["the Harbour district", "the harbour", "the harbour area"],
    "university": ["the University district", "the university district", "the university area"],
    "east_market": ["East Market", "the East Market district", "east market"],
}
WORKSHOP_SAY = {
    "old_town": ["the Old Town workshop", "Old Town", "your Old Town shop"],
    "riverside": ["the Riverside workshop", "Riverside", "your Riverside shop"],
    "north_hill": ["the North Hill workshop", "North Hill", "your North Hill shop"],
}
BIKE_A = {"classic": ["a classic bike", "a regular bike", "a classic bike", "a regular pedal bike"],
          "electric": ["an e-bike", "an electric bike", "an ebike", "an e-bike"],
          "cargo": ["a cargo bike"]}
BIKE_PL = {"classic": ["classic bikes", "regular bikes", "classic bikes"],
           "electric": ["e-bikes", "electric bikes", "ebikes"],
           "cargo": ["cargo bikes"]}
SERVICE_SAY = {
    "tune_up": ["a tune-up", "a basic tune up", "a tune-up"],
    "flat_repair": ["a puncture repair", "a flat tyre repair", "a flat tire fix"],
    "brake_service": ["a brake service", "a brake adjustment", "new brake pads and a brake check"],
    "gear_service": ["a gear adjustment", "a gear service", "a look at the gears"],
    "full_service": ["a full service", "a complete service", "the full service"],
    "ebike_check": ["an e-bike check", "a motor and battery check for my e-bike", "an e-bike diagnostic"],
}
ISSUE_SAY = {
    "flat_tire": ["has a flat tyre", "has a flat tire", "has a punctured front tyre",
                  "has a completely flat back tire"],
    "brakes": ["has squeaky brakes", "has brakes that rub", "has a loose brake lever", "has weak back brakes"],
    "chain": ["has a chain that keeps coming off", "has a rusty, skipping chain", "has a broken chain"],
    "lights": ["has a broken front light", "has lights that don't turn on", "has a flickering rear light"],
    "battery": ["has a battery that won't charge", "has a dead battery", "has a battery that drains in minutes"],
    "other": ["has a missing bell", "has a wobbly saddle", "has a bent basket", "has a broken kickstand",
              "has a torn seat cover", "has a stuck seat post"],
}
PAY_SAY = {"card": ["by card", "with my card", "on my credit card"], "paypal": ["via PayPal", "with PayPal"],
           "bank_transfer": ["by bank transfer", "with a bank transfer"]}
DURATION_WORDS = {15: ["a quarter of an hour"], 30: ["half an hour"], 45: ["three quarters of an hour"],
                  60: ["an hour", "one hour"], 90: ["an hour and a half"], 120: ["two hours"]}
AMOUNT_WORDS = {10: ["ten euros"], 20: ["twenty euros"], 50: ["fifty euros"], 100: ["a hundred euros"]}

FIRST = ["Marta", "Oskar", "Leni", "Farid", "Sunniva", "Dario", "Hanne", "Kofi", "Beatriz", "Emil", "Yusuf", "Maren",
         "Tariq", "Ines", "Lorcan", "Svea", "Nikolai", "Amara", "Joost", "Helka", "Rafael", "Signe", "Bram", "Zuzana"]
LAST = ["Brennecke", "Oyelaran", "Santoro", "Vik", "Aldana", "Pruitt", "Haverkamp", "Quist", "Moreau-Lind",
        "Tenhagen", "Castellanos", "Nyberg", "Ferraz", "Doležal", "Ashworth", "Mbeki-Ross", "Lindgren", "Valtonen",
        "Okafor", "Rask"]
STATION_NAMES = ["Linden Square", "Mill Lane", "Harbour Gate", "Clocktower", "Tannery Yard", "Quarry Road",
                 "Library Steps", "Ferry Pier", "Elm Park", "Market Hall", "Observatory", "Brewers Row", "Canal Basin",
                 "Copper Bridge", "Wren Street", "Old Mint", "Lantern Close", "Rope Walk", "Tram Depot", "Salt Quay"]


def cap(s):
    return s[0].upper() + s[1:]


QUESTION_WORDS = {"how", "what", "what's", "which", "where", "is", "are", "can", "could", "any", "when", "hw"}


def end(s):
    if s[-1] in ".?!":
        return s
    return s + ("?" if s.split()[0].lower() in QUESTION_WORDS else ".")


def lower_first(s):
    first = s.split()[0]
    if first in ("I", "I'm", "I'd", "I've", "I'll") or not first[1:].islower():
        return s
    return s[0].lower() + s[1:]


# --- the training sampler ---------------------------------------------------------------------------------------


class Sampler:
    """Random ids, dates, names and numbers for training rows, none of which occurs in the eval set."""

    def __init__(self, rng, eval_rows):
        self.rng = rng
        text = " ".join(r["messages"][0]["content"] for r in eval_rows)
        self.banned = set(re.findall(r"\b(?:ST|MB|BK|RP)-\d+\b", text.upper()))
        self.banned_values = {}
        for r in eval_rows:
            for e in r["expected"]:
                for p, vals in e["arguments"].items():
                    self.banned_values.setdefault(p, set()).update(v for v in vals if not isinstance(v, bool))
        self.banned |= {v for vals in self.banned_values.values() for v in vals if isinstance(v, str)}
        self.banned_dates = {v for p in ("date", "start_date", "end_date") for v in self.banned_values.get(p, ())}
        self.banned_names = {w for v in self.banned_values.get("customer_name", ()) for w in v.split()}
        self.used = set()

    def _fresh(self, make):
        while True:
            v = make()
            if v not in self.banned and v not in self.used:
                self.used.add(v)
                return v

    def station(self):
        sid = self._fresh(lambda: f"ST-{self.rng.randint(100, 899)}")
        return sid, self.rng.choice([sid, sid, f"station {sid[3:]}", f"station {sid}"])

    def member(self):
        return self._fresh(lambda: f"MB-{self.rng.randint(10000, 99999)}")

    def bike(self):
        bid = self._fresh(lambda: f"BK-{self.rng.randint(1000, 9999)}")
        return bid, self.rng.choice([bid, bid, bid, f"bike {bid[3:]}"])

    def ticket(self):
        return self._fresh(lambda: f"RP-{self.rng.randint(1000, 9999)}")

    def date(self):
        while True:
            d = dt.date(2024, 6, 1) + dt.timedelta(days=self.rng.randint(0, 940))
            if d.isoformat() not in self.banned_dates:
                return d

    def name(self):
        while True:
            first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
            if first not in self.banned_names and last not in self.banned_names:
                return f"{first} {last}"

    def number(self, param, pool):
        return self.rng.choice([v for v in pool if v not in self.banned_values.get(param, ())])

    def duration(self):
        n = self.number("duration_minutes", [10, 12, 15, 18, 20, 22, 28, 30, 45, 60, 65, 80, 90, 95, 120, 150])
        forms = [f"{n} minutes", f"{n} minutes", f"{n} min"] + DURATION_WORDS.get(n, []) * 3
        return n, self.rng.choice(forms)

    def amount(self):
        n = self.number("amount_eur", [5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50, 60, 75, 80, 100, 120, 150])
        s = f"{n:.2f}" if n != int(n) else str(int(n))
        forms = [f"€{s}", f"€{s}", f"{s} euros", f"{s} EUR", f"EUR {s}"] + AMOUNT_WORDS.get(n, []) * 2
        return n, self.rng.choice(forms)

    def history_range(self):
        """(start, end, phrase) of a date range as people say it."""
        rng = self.rng
        while True:
            kind = rng.choice(["two", "two", "month", "day", "span"])
            if kind == "two":
                d1 = self.date()
                d2 = d1 + dt.timedelta(days=rng.randint(2, 45))
                s1, s2 = say_date(rng, d1), say_date(rng, d2)
                phrase = rng.choice([f"from {s1} to {s2}", f"between {s1} and {s2}", f"from {s1} through {s2}",
                                     f"from {s1} until {s2}"])
            elif kind == "month":
                d = self.date()
                d1 = d.replace(day=1)
                d2 = d.replace(day=calendar.monthrange(d.year, d.month)[1])
                m = f"{MONTHS[d.month - 1]} {d.year}"
                phrase = rng.choice([f"in {m}", f"for all of {m}", f"during {m}", f"for the whole of {m}"])
            elif kind == "day":
                d1 = d2 = self.date()
                phrase = f"on {say_date(rng, d1)}"
            else:
                d1 = self.date()
                last = calendar.monthrange(d1.year, d1.month)[1]
                if d1.day > last - 3:
                    continue
                d2 = d1.replace(day=rng.randint(d1.day + 2, last))
                m = MONTHS[d1.month - 1]
                phrase = rng.choice([f"from {d1.day} to {d2.day} {m} {d1.year}",
                                     f"for {m} {d1.day}-{d2.day}, {d1.year}",
                                     f"between the {ordinal(d1.day)} and the {ordinal(d2.day)} of {m} {d1.year}"])
            if d2.isoformat() not in self.banned_dates and d1.isoformat() not in self.banned_dates:
                return d1.isoformat(), d2.isoformat(), phrase


# Each question maker returns (question, function name, arguments). Optional arguments appear only when stated.


def q_station_status(s, docks=None):
    rng = s.rng
    sid, st = s.station()
    docks = rng.random() < 0.35 if docks is None else docks
    if docks:
        t = rng.choice([
            "How many free docks are there at {st}?", "Can I return my bike at {st}? Is there a free dock?",
            "Bikes and empty docks at {st}?", "I want to drop my bike off at {st}. Any space left?",
            "Is {st} full? I need somewhere to park my bike.", "Check {st}, including free docks.",
            "how many open docks at {st}", "Is there a free spot to dock at {st}?",
            "Could you tell me the bikes and the free docks at {st}?", "any room to return a bike at {st}?"])
        return t.format(st=st), "get_station_status", {"station_id": sid, "include_docks": True}
    t = rng.choice([
        "How many bikes are at {st}?", "What's available at {st} right now?", "hw many bikes left at {st}",
        "Can you check {st} for me?", "Is there a bike I can take at {st}?",
        "I'm standing at {st}. What bikes are there?",
        "status of {st} please", "Any e-bikes at {st}?", "Check bike availability at {st}.",
        "Are there cargo bikes at {st} at the moment?", "What does {st} have right now?",
        "I need a bike from {st}, what's there?", "Could you look up how many bikes {st} currently has?",
        "bikes at {st}?", "Hi! Are there any bikes at {st}?", "Is {st} empty or are there bikes?"])
    return t.format(st=st), "get_station_status", {"station_id": sid}


def q_find_stations(s, bike=None):
    rng = s.rng
    dist = rng.choice(DISTRICTS)
    d = rng.choice(DISTRICT_SAY[dist])
    bike = bike or rng.choice(["any", "any", "classic", "electric", "electric", "cargo"])
    use_min = rng.random() < 0.35
    n = s.number("min_bikes", [2, 3, 5, 8, 10])
    args = {"district": dist}
    if bike == "any" and not use_min:
        t = rng.choice(["Which stations in {d} have bikes?", "Where can I find a bike in {d}?",
                        "list stations in {d} with bikes available", "Any bikes around {d}?",
                        "I'm in {d}. Which docks have bikes right now?", "Find me a station with bikes in {d}.",
                        "where r the bikes in {d}", "Are there bikes anywhere in {d} right now?"])
    elif bike == "any":
        t = rng.choice(["Which stations in {d} have at least {n} bikes?",
                        "We're a group of {n}. Where in {d} can we all get a bike at the same station?",
                        "Stations in {d} with {n} or more bikes, please.",
                        "I need {n} bikes from one station in {d}. Where should I go?"])
        args["min_bikes"] = n
    elif not use_min:
        t = rng.choice(["Where can I get {a} in {d}?", "Which stations in {d} have {pl} available?",
                        "find {pl} in {d}", "Are there any {pl} in {d} right now?",
                        "I'm looking for {a} somewhere in {d}.", "Which docks in {d} have {pl} at the moment?"])
        args["bike_type"] = bike
    else:
        t = rng.choice(["I need {n} {pl} from one station in {d}. Where should I go?",
                        "Find stations in {d} with at least {n} {pl}.", "Stations in {d} with {n}+ {pl}?",
                        "Which stations in {d} have {n} or more {pl}?"])
        args["bike_type"], args["min_bikes"] = bike, n
    a = rng.choice(BIKE_A.get(bike, ["a bike"]))
    pl = rng.choice(BIKE_PL.get(bike, ["bikes"]))
    q = t.format(d=d, n=n, a=a, pl=pl)
    return cap(q), "find_stations", args


def q_reserve(s):
    rng = s.rng
    sid, st = s.station()
    mb = s.member()
    bike = rng.choice(["classic", "electric", "electric", "cargo"])
    a = rng.choice(BIKE_A[bike])
    args = {"station_id": sid, "member_id": mb, "bike_type": bike}
    if rng.random() < 0.35:
        h = s.number("hold_minutes", list(range(5, 31)))
        hold = {30: "half an hour", 15: "a quarter of an hour"}.get(h) if rng.random() < 0.5 else None
        hold = hold or f"{h} minutes"
        t = rng.choice(["Hold {a} at {st} for {hold}, member {mb}.",
                        "Can you reserve {a} at {st} for {mb} and keep it for {hold}?",
                        "I'm {mb}. Please hold {a} for me at {st} for {hold}.",
                        "Member {mb}: {a} at {st}, held for {hold} please.",
                        "reserve {a} at {st} for {hold} (member {mb})"])
        args["hold_minutes"] = h
    else:
        hold = ""
        t = rng.choice(["Reserve {a} at {st} for member {mb}.", "Please hold {a} for me at {st}. My member id is {mb}.",
                        "I'm {mb}. Can you keep {a} aside at {st}?", "book {a} at {st}, member {mb}",
                        "Could you reserve me {a} at {st}? Member number {mb}.",
                        "{mb} here. I'll be at {st} soon, please hold {a}.", "resrve {a} @ {st} for {mb} pls",
                        "Save {a} for {mb} at {st}, thanks."])
    return cap(t.format(a=a, st=st, mb=mb, hold=hold)), "reserve_bike", args


def q_history(s):
    rng = s.rng
    mb = s.member()
    start, stop, rg = s.history_range()
    args = {"member_id": mb, "start_date": start, "end_date": stop}
    if rng.random() < 0.3:
        lim = s.number("limit", [3, 5, 6, 10, 15, 20])
        t = rng.choice(["Show the last {lim} rides of {mb} {rg}.",
                        "Just the {lim} most recent rides for {mb} {rg}, please.",
                        "{mb}: list up to {lim} rides {rg}", "I'm {mb}. Give me at most {lim} of my rides {rg}."])
        args["limit"] = lim
    else:
        lim = 0
        t = rng.choice(["Show the rides of {mb} {rg}.", "What rides did I take {rg}? I'm {mb}.",
                        "ride history for {mb} {rg}", "Can you pull up my trips {rg}? Member {mb}.",
                        "I'd like to see every ride on account {mb} {rg}.", "Which trips did {mb} make {rg}?",
                        "my rides {rg} pls, member id {mb}", "List all rides by member {mb} {rg}."])
    return cap(t.format(mb=mb, rg=rg, lim=lim)), "get_ride_history", args


def q_fare(s, bike=None):
    rng = s.rng
    bike = bike or rng.choice(["classic", "electric", "cargo"])
    n, dur = s.duration()
    a = rng.choice(BIKE_A[bike])
    args = {"bike_type": bike, "duration_minutes": n}
    if rng.random() < 0.35:
        t = rng.choice(["I'm a member. How much is {dur} on {a}?",
                        "With my membership discount, what would {a} cost for {dur}?",
                        "member price for {a}, {dur}?", "How much would {dur} on {a} be for a Pedalwick member?",
                        "As a member, what will I pay for {a} for {dur}?"])
        args["member"] = True
    else:
        t = rng.choice(["How much does it cost to ride {a} for {dur}?", "What's the fare for {dur} on {a}?",
                        "price check: {a}, {dur}", "Roughly how much would {dur} on {a} cost?",
                        "If I take {a} for {dur}, what will I pay?", "estimate the fare for {dur} on {a}",
                        "how much is {a} for {dur}", "What would I be charged for riding {a} for {dur}?"])
    return cap(t.format(a=a, dur=dur)), "estimate_fare", args


def q_topup(s):
    rng = s.rng
    mb = s.member()
    n, amt = s.amount()
    args = {"member_id": mb, "amount_eur": n}
    if rng.random() < 0.4:
        pay = rng.choice(["card", "paypal", "paypal", "bank_transfer", "bank_transfer"])
        p = rng.choice(PAY_SAY[pay])
        t = rng.choice(["Add {amt} to {mb} {p}.", "I'd like to top up {amt} {p}. Member ID {mb}.",
                        "Please put {amt} on the wallet of {mb}, paying {p}.",
                        "Top up {mb} with {amt} {p}, please."])
        args["payment_method"] = pay
    else:
        p = ""
        t = rng.choice(["Top up {mb} with {amt}.", "Add {amt} to my wallet, member {mb}.",
                        "Please put {amt} on the ride wallet of {mb}.", "I'm {mb}, load {amt} onto my account.",
                        "topup {amt} for {mb}", "Can you add {amt} to {mb}'s wallet?",
                        "My wallet is almost empty. Add {amt} please, I'm {mb}."])
    return cap(t.format(mb=mb, amt=amt, p=p)), "top_up_wallet", args


def q_report(s):
    rng = s.rng
    bid, bk = s.bike()
    issue = rng.choice(ISSUES)
    what = rng.choice(ISSUE_SAY[issue])
    args = {"bike_id": bid, "issue_type": issue}
    style = rng.choice(["plain", "plain", "plain", "station", "station", "urgent"])
    st = ""
    if style == "plain":
        t = rng.choice(["Shared bike {bk} {what}.", "I want to report {bk}: it {what}.", "Reporting {bk}, it {what}.",
                        "{bk} {what}. Can you log it?", "The rental bike {bk} {what}.",
                        "heads up, {bk} {what}", "Please report {bk}, it {what}."])
    elif style == "station":
        sid, st = s.station()
        args["station_id"] = sid
        t = rng.choice(["{bk} at {st} {what}.", "Please report {bk}: it {what}. It's parked at {st}.",
                        "The shared bike {bk}, docked at {st}, {what}.", "At {st}: {bk} {what}."])
    else:
        if rng.random() < 0.5:
            sid, st = s.station()
            args["station_id"] = sid
            t = rng.choice(["Please file an urgent report: {bk} at {st} {what}.",
                            "{bk} at {st} {what}. Mark it urgent please."])
        else:
            t = rng.choice(["Urgent: {bk} {what}.", "{bk} {what}. Please mark it as urgent.",
                            "Can you report {bk} as urgent? It {what}."])
        args["urgent"] = True
    return cap(t.format(bk=bk, what=what, st=st)), "report_bike_issue", args


def q_book(s):
    rng = s.rng
    ws = rng.choice(WORKSHOPS)
    w = rng.choice(WORKSHOP_SAY[ws])
    d = s.date()
    day = say_date(rng, d)
    svc = rng.choice(SERVICES)
    sv = rng.choice(SERVICE_SAY[svc])
    name = s.name()
    args = {"workshop": ws, "date": d.isoformat(), "service": svc, "customer_name": name}
    if rng.random() < 0.25:
        t = rng.choice(["Book {sv} at {w} on {day} for {name}, with express same-day service please.",
                        "{name} here. I need {sv} at {w} on {day}, and I'd like the express option.",
                        "Express repair please: {sv} for my own bike at {w}, {day}. Name {name}."])
        args["express"] = True
    elif svc == "flat_repair" and rng.random() < 0.6:
        t = rng.choice(["My own bike has a puncture. Can {w} fix it on {day}? I'm {name}.",
                        "I got a flat on my own bike. Book it into {w} on {day}, name {name}."])
    else:
        t = rng.choice(["Book {sv} for my bike at {w} on {day}. Name: {name}.",
                        "I'm {name}. Can I bring my own bike to {w} on {day} for {sv}?",
                        "Please schedule {sv} at {w} on {day} for {name}.",
                        "my bike needs {sv} - {w}, {day}, name {name}",
                        "Could you make a repair appointment for {name} at {w} on {day}? My bike needs {sv}.",
                        "I'd like to book my own bike in for {sv} on {day} at {w}. The name is {name}."])
    return cap(t.format(sv=sv, w=w, day=day, name=name)), "book_repair", args


def q_repair_status(s):
    rng = s.rng
    rp = s.ticket()
    t = rng.choice(["What's the status of {rp}?", "Is my bike ready? Ticket {rp}.", "any update on repair {rp}",
                    "Check repair ticket {rp} please.", "How is repair {rp} coming along?", "When will {rp} be done?",
                    "I left my bike at the workshop, ticket {rp}. Is it finished?", "status {rp}",
                    "Can I pick up my bike yet? The ticket is {rp}."])
    return t.format(rp=rp), "get_repair_status", {"ticket_id": rp}


MAKERS = {"get_station_status": q_station_status, "find_stations": q_find_stations, "reserve_bike": q_reserve,
          "get_ride_history": q_history, "estimate_fare": q_fare, "top_up_wallet": q_topup,
          "report_bike_issue": q_report, "book_repair": q_book, "get_repair_status": q_repair_status}


def q_parallel(s):
    """(question, [(name, args), ...]) asking for two or three things at once."""
    rng = s.rng
    kind = rng.choice(["status", "status", "find", "tickets", "fares", "topups", "reports", "history", "reserve",
                       "mixed", "mixed", "mixed", "mixed", "mixed", "mixed", "same_member", "same_member"])
    if kind == "status":
        k = rng.choice([2, 2, 3])
        sts = [s.station() for _ in range(k)]
        docks = rng.random() < 0.3
        ids = [x[0] for x in sts]
        if docks:
            t = rng.choice(["Free docks at {a} and {b}?",
                            "Can I return bikes at {a} or {b}? Check free docks at both."])
            q = t.format(a=sts[0][1], b=sts[1][1])
            return q, [("get_station_status", {"station_id": i, "include_docks": True}) for i in ids[:2]]
        if k == 3:
            t = rng.choice(["Check {a}, {b} and {c} for me.", "How many bikes at {a}, {b} and {c}?",
                            "bikes at {a}, {b}, {c}?"])
        else:
            t = rng.choice(["How many bikes are at {a} and {b}?", "Compare {a} with {b}: which has more bikes?",
                            "What's at {a}? And at {b}?", "Check {a} and {b} please."])
        q = t.format(a=sts[0][1], b=sts[1][1], c=sts[-1][1])
        return q, [("get_station_status", {"station_id": i}) for i in ids]
    if kind == "find":
        k = rng.choice([2, 2, 3])
        dists = rng.sample(DISTRICTS, k)
        ds = [rng.choice(DISTRICT_SAY[d]) for d in dists]
        bike = rng.choice(["any", "classic", "electric", "cargo"])
        if bike == "any":
            t = rng.choice(["Find stations with bikes in {a} and in {b}.", "Which stations have bikes in {a} and {b}?"])
            calls = [("find_stations", {"district": d}) for d in dists[:2]]
        elif k == 3:
            t = rng.choice(["Show stations with {pl} in {a}, {b} and {c}.", "{pl} in {a}, {b} or {c}?"])
            calls = [("find_stations", {"district": d, "bike_type": bike}) for d in dists]
        else:
            t = rng.choice(["Are there {pl} in {a} or {b}?", "Find {pl} in {a} and also in {b}."])
            calls = [("find_stations", {"district": d, "bike_type": bike}) for d in dists[:2]]
        q = t.format(a=ds[0], b=ds[1], c=ds[-1], pl=rng.choice(BIKE_PL.get(bike, ["bikes"])))
        return cap(q), calls
    if kind == "tickets":
        rps = [s.ticket() for _ in range(rng.choice([2, 2, 3]))]
        if len(rps) == 3:
            q = rng.choice(["Check tickets {0}, {1} and {2}.", "Status of {0}, {1} and {2}?"]).format(*rps)
        else:
            q = rng.choice(["Status of {0} and {1}?", "Are repairs {0} and {1} done?",
                            "I have two bikes in the workshop, {0} and {1}. Any news?"]).format(*rps)
        return q, [("get_repair_status", {"ticket_id": r}) for r in rps]
    if kind == "fares":
        if rng.random() < 0.5:
            b1, b2 = rng.sample(["classic", "electric", "cargo"], 2)
            n, dur = s.duration()
            q = rng.choice(["Compare {dur} on {a} and {dur} on {b}.", "What's cheaper for {dur}: {a} or {b}?",
                            "Price of {dur} on {a}, and the same on {b}?"]).format(
                dur=dur, a=rng.choice(BIKE_A[b1]), b=rng.choice(BIKE_A[b2]))
            return cap(q), [("estimate_fare", {"bike_type": b, "duration_minutes": n}) for b in (b1, b2)]
        bike = rng.choice(["classic", "electric", "cargo"])
        (n1, d1), (n2, d2) = s.duration(), s.duration()
        if n1 == n2:
            return q_parallel(s)
        q = rng.choice(["How much is {d1} versus {d2} on {a}?", "Fares for {a}: {d1}, and {d2}?"]).format(
            d1=d1, d2=d2, a=rng.choice(BIKE_A[bike]))
        return cap(q), [("estimate_fare", {"bike_type": bike, "duration_minutes": n}) for n in (n1, n2)]
    if kind == "topups":
        m1, m2 = s.member(), s.member()
        (n1, a1), (n2, a2) = s.amount(), s.amount()
        q = rng.choice(["Add {a1} to {m1} and {a2} to {m2}.", "Top up {m1} with {a1}, and {m2} with {a2}."]).format(
            a1=a1, a2=a2, m1=m1, m2=m2)
        return q, [("top_up_wallet", {"member_id": m1, "amount_eur": n1}),
                   ("top_up_wallet", {"member_id": m2, "amount_eur": n2})]
    if kind == "reports":
        (b1, s1), (b2, s2) = s.bike(), s.bike()
        i1, i2 = rng.sample(ISSUES, 2)
        q = rng.choice(["{s1} {w1}, and {s2} {w2}.", "Two broken rentals: {s1} {w1}; {s2} {w2}."]).format(
            s1=s1, s2=s2, w1=rng.choice(ISSUE_SAY[i1]), w2=rng.choice(ISSUE_SAY[i2]))
        return cap(q), [("report_bike_issue", {"bike_id": b1, "issue_type": i1}),
                        ("report_bike_issue", {"bike_id": b2, "issue_type": i2})]
    if kind == "history":
        m1, m2 = s.member(), s.member()
        start, stop, rg = s.history_range()
        q = rng.choice(["Show rides for {m1} and {m2} {rg}.", "Ride history {rg} for {m1}, and the same for {m2}."])
        return q.format(m1=m1, m2=m2, rg=rg), [
            ("get_ride_history", {"member_id": m, "start_date": start, "end_date": stop}) for m in (m1, m2)]
    if kind == "reserve":
        sid, st = s.station()
        m1, m2 = s.member(), s.member()
        bike = rng.choice(["classic", "electric", "cargo"])
        q = rng.choice(["Reserve {pl} at {st} for {m1} and for {m2}.",
                        "We're two members, {m1} and {m2}. Hold {pl} for both of us at {st}."]).format(
            pl=rng.choice(BIKE_PL[bike]), st=st, m1=m1, m2=m2)
        return q, [("reserve_bike", {"station_id": sid, "member_id": m, "bike_type": bike}) for m in (m1, m2)]
    if kind == "same_member":
        mb = s.member()
        n, amt = s.amount()
        start, stop, rg = s.history_range()
        q = rng.choice(["I'm {mb}. Top up {amt} and show my rides {rg}.",
                        "Member {mb}: add {amt} to my wallet and list my rides {rg}."]).format(mb=mb, amt=amt, rg=rg)
        return q, [("top_up_wallet", {"member_id": mb, "amount_eur": n}),
                   ("get_ride_history", {"member_id": mb, "start_date": start, "end_date": stop})]
    k = rng.choice([2, 2, 2, 3])
    fns = rng.sample(NAMES, k)
    while len(set(fns) & {"reserve_bike", "get_ride_history", "top_up_wallet"}) > 1:  # one speaker, one member id
        fns = rng.sample(NAMES, k)
    parts = [MAKERS[f](s) for f in fns]
    qs = [end(p[0]) for p in parts]
    if k == 3:
        q = rng.choice(["{0} {1} {2}", "A few things: {0} {1} And {2}", "{0}\n{1}\n{2}"])
        q = q.format(qs[0], qs[1], lower_first(qs[2]) if "And {2}" in q else qs[2])
    else:
        form = rng.choice(["{0} Also, {1}", "{0} And {1}", "Two things. {0} {1}", "{0}\n{1}", "{0} Plus, {1}"])
        q = form.format(qs[0], lower_first(qs[1]) if form.count(",") or "And" in form else qs[1])
    return q, [(p[1], p[2]) for p in parts]


# --- tool results and answers for the longer rows ---------------------------------------------------------------


def money(x):
    return f"€{x:.2f}"


def result_for(rng, name, a):
    """A made-up tool result (dict) for a call."""
    if name == "get_station_status":
        r = {"station_id": a["station_id"], "name": rng.choice(STATION_NAMES), "classic": rng.randint(0, 9),
             "electric": rng.randint(0, 5), "cargo": rng.choice([0, 0, 1, 2])}
        if a.get("include_docks"):
            r["free_docks"] = rng.randint(0, 12)
        return r
    if name == "find_stations":
        k = rng.choice([0, 1, 2, 2, 3])
        stations = []
        for _ in range(k):
            stations.append({"station_id": f"ST-{rng.randint(100, 899)}", "name": rng.choice(STATION_NAMES),
                             "bikes": rng.randint(a.get("min_bikes", 1), a.get("min_bikes", 1) + 6)})
        return {"district": a["district"], "stations": stations}
    if name == "reserve_bike":
        hold = a.get("hold_minutes", 10)
        h, m = rng.randint(7, 20), rng.randrange(0, 60, 5)
        until = (dt.datetime(2025, 1, 1, h, m) + dt.timedelta(minutes=hold)).strftime("%H:%M")
        return {"reservation_id": f"RS-{rng.randint(10000, 99999)}", "bike_id": f"BK-{rng.randint(1000, 9999)}",
                "station_id": a["station_id"], "bike_type": a["bike_type"], "held_until": until}
    if name == "get_ride_history":
        d1, d2 = dt.date.fromisoformat(a["start_date"]), dt.date.fromisoformat(a["end_date"])
        k = min(rng.choice([0, 1, 2, 2, 3]), a.get("limit", 10))
        days = sorted((d1 + dt.timedelta(days=rng.randint(0, (d2 - d1).days)) for _ in range(k)), reverse=True)
        rides = []
        for d in days:
            minutes = rng.randint(6, 48)
            rides.append({"date": d.isoformat(), "from": f"ST-{rng.randint(100, 899)}",
                          "to": f"ST-{rng.randint(100, 899)}", "minutes": minutes,
                          "cost_eur": round(1 + 0.1 * minutes, 2)})
        return {"member_id": a["member_id"], "rides": rides}
    if name == "estimate_fare":
        unlock, per = {"classic": (1.0, 0.10), "electric": (1.0, 0.25), "cargo": (1.5, 0.30)}[a["bike_type"]]
        fare = (unlock + per * a["duration_minutes"]) * (0.75 if a.get("member") else 1.0)
        return {"bike_type": a["bike_type"], "duration_minutes": a["duration_minutes"],
                "member": a.get("member", False), "fare_eur": round(fare, 2)}
    if name == "top_up_wallet":
        return {"member_id": a["member_id"], "added_eur": a["amount_eur"],
                "new_balance_eur": round(a["amount_eur"] + rng.randint(0, 3000) / 100, 2),
                "payment_method": a.get("payment_method", "card")}
    if name == "report_bike_issue":
        return {"report_id": f"IR-{rng.randint(1000, 9999)}", "bike_id": a["bike_id"], "status": "logged",
                "pickup": "within 4 hours" if a.get("urgent") else "within 24 hours"}
    if name == "book_repair":
        return {"ticket_id": f"RP-{rng.randint(1000, 9999)}", "workshop": a["workshop"], "date": a["date"],
                "service": a["service"], "drop_off": rng.choice(["08:30-10:00", "09:00-11:00", "13:00-14:30"])}
    status = rng.choice(["in_progress", "waiting_for_parts", "ready_for_pickup"])
    r = {"ticket_id": a["ticket_id"], "status": status}
    if status != "ready_for_pickup":
        r["ready_by"] = (dt.date(2025, 5, 1) + dt.timedelta(days=rng.randint(0, 400))).isoformat()
    return r


def pretty(key):
    return {"university": "the University district", "harbour": "the Harbour district"}.get(
        key, key.replace("_", " ").title())


def answer_for(rng, name, a, r):
    """One or two sentences that report the result `r` of calling `name` with `a`."""
    if name == "get_station_status":
        counts = [f"{r['classic']} classic", f"{r['electric']} electric", f"{r['cargo']} cargo"]
        s = f"{r['station_id']} ({r['name']}) has {', '.join(counts[:2])} and {counts[2]} bikes right now"
        if "free_docks" in r:
            docks = r["free_docks"]
            s += f", and {docks} free dock{'s' if docks != 1 else ''}" if docks else ", but no free docks"
        return s + "."
    if name == "find_stations":
        where = pretty(a["district"])
        if not r["stations"]:
            return f"I couldn't find any stations in {where} that match right now."
        items = [f"{x['station_id']} ({x['name']}, {x['bikes']} bikes)" for x in r["stations"]]
        return f"In {where}, try " + (" or ".join(items) if len(items) < 3 else
                                       ", ".join(items[:-1]) + " or " + items[-1]) + "."
    if name == "reserve_bike":
        return rng.choice([
            "Done! {bike} ({type}) is held for you at {st} until {until}. Your reservation is {res}.",
            "Your {type} bike {bike} is reserved at {st} until {until} (reservation {res})."]).format(
            bike=r["bike_id"], type=r["bike_type"], st=r["station_id"], until=r["held_until"],
            res=r["reservation_id"])
    if name == "get_ride_history":
        rides = r["rides"]
        if not rides:
            return f"{r['member_id']} has no rides in that period."
        parts = [f"{x['date']}: {x['from']} to {x['to']}, {x['minutes']} min, {money(x['cost_eur'])}" for x in rides]
        head = f"{r['member_id']} has {len(rides)} ride{'s' if len(rides) > 1 else ''} in that period: "
        return head + "; ".join(parts) + "."
    if name == "estimate_fare":
        who = " with the member discount" if r["member"] else ""
        return rng.choice(["A {m}-minute {t} ride would cost about {f}{w}.",
                           "That comes to roughly {f}{w} for {m} minutes on {a} bike."]).format(
            m=r["duration_minutes"], t=r["bike_type"], f=money(r["fare_eur"]), w=who,
            a="an electric" if r["bike_type"] == "electric" else f"a {r['bike_type']}")
    if name == "top_up_wallet":
        return (f"I've added {money(r['added_eur'])} to {r['member_id']}'s wallet "
                f"({r['payment_method'].replace('_', ' ')}). The new balance is {money(r['new_balance_eur'])}.")
    if name == "report_bike_issue":
        return (f"Thanks, {r['bike_id']} is reported (report {r['report_id']}). "
                f"The crew will collect it {r['pickup']}.")
    if name == "book_repair":
        lo, hi = r["drop_off"].split("-")
        return (f"You're booked in at the {pretty(r['workshop'])} workshop on {r['date']} for "
                f"{r['service'].replace('_', ' ')}. Your ticket is {r['ticket_id']}; please drop the bike off "
                f"between {lo} and {hi}.")
    if r["status"] == "ready_for_pickup":
        return f"Good news: the bike on ticket {r['ticket_id']} is ready for pickup."
    state = "being repaired" if r["status"] == "in_progress" else "waiting for parts"
    return f"Ticket {r['ticket_id']} is {state}; it should be ready by {r['ready_by']}."


# --- irrelevance ------------------------------------------------------------------------------------------------

CANT = "I can't {0} with the tools I have here"
TRAIN_IRRELEVANT = [
    ("hi", "Hi! How can I help you with Pedalwick today?"),
    ("Hello, who am I talking to?", "I'm the Pedalwick assistant. Ask me about bikes, stations, rides or repairs, "
                                    "and I'll help with what my tools allow."),
    ("thanks a lot!", "You're welcome! Enjoy your ride."),
    ("ok bye", "Bye! Ride safely."),
    ("hey there, how's it going?", "All good, thanks! What can I do for you today?"),
    ("Tell me a joke.", "Why can't a bicycle stand up on its own? Because it's two-tired."),
    ("What's the capital of Canada?", "The capital of Canada is Ottawa."),
    ("How many kilometres are in a mile?", "One mile is about 1.61 kilometres."),
    ("What is 12 times 15?", "12 times 15 is 180."),
    ("Write a two-line poem about rain.", "Soft rain taps the quiet street,\nand puddles hum beneath my feet."),
    ("Can you cancel my reservation?", "Sorry, " + CANT.format("cancel reservations") + "."),
    ("I want my money back for a ride that was overcharged.",
     "I'm sorry about that. " + CANT.format("issue refunds") + "; please contact Pedalwick customer support."),
    ("Change my email address to ana.v@example.com.", "Sorry, " + CANT.format("change account details") + "."),
    ("Reset my password please", "Sorry, " + CANT.format("reset passwords") + "."),
    ("What's the weather going to be like this weekend?", "Sorry, I don't have access to weather forecasts."),
    ("How do I fix a puncture myself?",
     "Take the wheel off, lever the tyre off, find the hole (pump the tube and listen), roughen the spot, glue on a "
     "patch, then refit the tube and tyre and pump it up."),
    ("How often should I oil my chain?", "Roughly every few hundred kilometres, or after riding in the rain. Wipe "
                                         "off the excess oil afterwards."),
    ("What tyre pressure should I use on a city bike?",
     "Check the range printed on the tyre's sidewall; city tyres are usually pumped to somewhere in that range."),
    ("Can you plan a scenic route along the river for me?", "Sorry, " + CANT.format("plan routes") + "."),
    ("Are helmets mandatory?", "That depends on local law, and I can't look it up here. Wearing one is always a "
                               "good idea."),
    ("What are the workshop opening hours?", "Sorry, I don't have the workshops' opening hours."),
    ("Do you sell second-hand bikes?", "Sorry, I don't have information about bike sales."),
    ("I left my phone in a bike basket. Can you find it?",
     "Sorry, " + CANT.format("search for lost items") + ". Please contact Pedalwick customer support."),
    ("Convert 25 degrees Celsius to Fahrenheit.", "25 °C is 77 °F."),
    ("Translate 'good morning' into French.", "'Good morning' in French is 'bonjour'."),
    ("Is cycling good for your knees?", "Generally yes: cycling is low-impact, as long as the saddle height is "
                                        "right."),
    ("Sign me up for a membership.", "Sorry, " + CANT.format("create memberships") + "."),
    ("Can I transfer my membership to my sister?", "Sorry, " + CANT.format("transfer memberships") + "."),
    ("Give me the phone number of your head office.", "Sorry, I don't have that phone number."),
    ("What's the best kind of bike lock?", "A sturdy D-lock, ideally with a cable for the front wheel, is a good "
                                           "choice."),
    ("Can you order a taxi for me?", "Sorry, " + CANT.format("order taxis") + "."),
    ("How long does it take to cycle 10 km?", "At a relaxed 15 to 20 km/h, about 30 to 40 minutes."),
    ("What's the difference between an e-bike and a moped?",
     "An e-bike's motor only helps while you pedal; a moped runs on its motor alone."),
    ("Please extend my annual pass.", "Sorry, " + CANT.format("extend passes") + "."),
    ("Summarise Romeo and Juliet in one sentence.",
     "Two young lovers from feuding families in Verona marry in secret, and a chain of mishaps ends in both their "
     "deaths."),
    ("I'm bored, talk to me.", "Happy to chat! Planning a ride anywhere nice soon?"),
    ("What's your favourite colour?", "I don't have one, but plenty of riders like a bright bike that's easy to "
                                      "spot."),
    ("Cancel my workshop appointment for Thursday.", "Sorry, " + CANT.format("cancel workshop bookings") + "."),
    ("Move my repair booking to a later date.", "Sorry, " + CANT.format("reschedule repair bookings") + "."),
    ("Can I pay a parking fine with cash?", "Sorry, I don't have information about paying fines."),
    ("Delete all my ride data.", "Sorry, " + CANT.format("delete ride data") + "."),
    ("Is Pedalwick hiring?", "Sorry, I don't have information about jobs at Pedalwick."),
    ("What's 15% of 80?", "15% of 80 is 12."),
    ("Spell 'bicycle' backwards.", "elcycib"),
    ("How do I say thank you in German?", "'Thank you' in German is 'danke'."),
    ("Remind me tomorrow at 8 to pick up my bike.", "Sorry, " + CANT.format("set reminders") + "."),
    ("Send me my invoice by email.", "Sorry, " + CANT.format("send invoices") + "."),
    ("Which is faster, a cargo bike or a road bike?", "A road bike: it is much lighter and built for speed."),
    ("Can kids ride your bikes?", "Sorry, I don't have the age rules for riders."),
    ("What's the tallest mountain in the world?", "Mount Everest, at about 8,849 metres."),
    ("Can you recommend a good pizza place?", "Sorry, I can't recommend restaurants."),
    ("Why is the sky blue?", "Air scatters blue light more than red light, so blue light reaches our eyes from all "
                             "over the sky."),
    ("Book me a train ticket to the coast.", "Sorry, " + CANT.format("book train tickets") + "."),
    ("Add a second rider to my account.", "Sorry, " + CANT.format("change account riders") + "."),
    ("How do I report a bug in your app?",
     "I can only report faults on shared bikes. For problems with the app, please contact Pedalwick customer "
     "support."),
    ("The app won't unlock BK-2417. Can you unlock it for me?", "Sorry, " + CANT.format("unlock bikes") + "."),
    ("Withdraw my wallet balance to my bank account.", "Sorry, " + CANT.format("withdraw wallet money") + "."),
    ("What's the status of my membership renewal?", "Sorry, " + CANT.format("check membership renewals") + "."),
]
MISSING = {
    "get_station_status": "check a station's bikes", "find_stations": "search for stations",
    "reserve_bike": "reserve bikes", "get_ride_history": "look up ride history", "estimate_fare": "estimate fares",
    "top_up_wallet": "top up wallets", "report_bike_issue": "report bike faults",
    "book_repair": "book workshop appointments", "get_repair_status": "check repair tickets",
}


# --- building the rows ------------------------------------------------------------------------------------------


def call_message(calls):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a, ensure_ascii=False)}}
        for i, (n, a) in enumerate(calls, 1)]}


def conversation(rng, question, calls, long):
    msgs = [{"role": "user", "content": question}, call_message(calls)]
    if long:
        answers = []
        for i, (n, a) in enumerate(calls, 1):
            r = result_for(rng, n, a)
            msgs.append({"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps(r, ensure_ascii=False)})
            answers.append(answer_for(rng, n, a, r))
        msgs.append({"role": "assistant", "content": " ".join(answers)})
    return msgs


def build_train(eval_rows, scale=1):
    """The training rows: `scale` times the standard 360 (same mix of categories; scale 1 is train.jsonl)."""
    rng = random.Random(TRAIN_SEED)
    s = Sampler(rng, eval_rows)
    forbidden = set().union(*(accepted_arg_sets(e) for r in eval_rows for e in r["expected"]))
    eval_questions = {norm(r["messages"][0]["content"]) for r in eval_rows}
    seen = set()

    def fresh(make):
        while True:
            q, calls = make()
            if norm(q) in seen or norm(q) in eval_questions or any(canon(n, a) in forbidden for n, a in calls):
                continue
            seen.add(norm(q))
            return q, calls

    def single(name):
        def make():
            q, n, a = MAKERS[name](s)
            return q, [(n, a)]
        return make

    rows = []
    plan = [(S, 144 * scale, 24 * scale), (M, 72 * scale, 14 * scale), (P, 72 * scale, 16 * scale)]
    for cat, total, n_long in plan:
        longs = set(rng.sample(range(total), n_long))
        for i in range(total):
            if cat == P:
                q, calls = fresh(lambda: q_parallel(s))
            else:
                q, calls = fresh(single(NAMES[i % len(NAMES)]))
            tools = pick_tools(rng, cat, [n for n, _ in calls])
            rows.append({"tools": tools, "messages": conversation(rng, q, calls, i in longs)})
    irrelevant = list(TRAIN_IRRELEVANT) * scale  # the hand-written ones recur, each time with other tools offered
    for i in range(72 * scale - len(irrelevant)):
        name = NAMES[i % len(NAMES)]
        q, _ = fresh(single(name))
        tools = rng.sample([n for n in NAMES if n not in FAMILY[name]], rng.choice([2, 3, 4]))
        reply = rng.choice(["Sorry, " + CANT.format(MISSING[name]) + ".",
                            f"I'm afraid I can't {MISSING[name]} right now: none of my available tools does that."])
        irrelevant.append((q, reply, tools))
    for item in irrelevant:
        q, reply = item[:2]
        seen.add(norm(q))
        tools = [TOOL[n] for n in item[2]] if len(item) > 2 else pick_tools(rng, N, [])
        rows.append({"tools": tools, "messages": [{"role": "user", "content": q},
                                                  {"role": "assistant", "content": reply}]})
    rng.shuffle(rows)
    return rows


def norm(text):
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def check_weekdays(text):
    """Any 'Weekday D Month YYYY' in `text` names the right weekday."""
    pat = r"\b(" + "|".join(WEEKDAYS) + r"),? (\d{1,2}) (" + "|".join(MONTHS) + r") (\d{4})"
    for wd, d, m, y in re.findall(pat, text):
        day = dt.date(int(y), MONTHS.index(m) + 1, int(d))
        assert WEEKDAYS[day.weekday()] == wd, f"{text!r}: {day} is a {WEEKDAYS[day.weekday()]}"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=int, default=1,
                    help="training rows: this many times the standard 360 (same mix; 1 gives train.jsonl)")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for the three files (default: this one)")
    args = ap.parse_args()
    eval_rows = build_eval()
    train_rows = build_train(eval_rows, args.scale)
    for r in eval_rows + train_rows:
        check_weekdays(r["messages"][0]["content"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tools.json").write_text(json.dumps(TOOLS, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_jsonl(args.out / "train.jsonl", train_rows)
    write_jsonl(args.out / "eval.jsonl", eval_rows)
    print(f"wrote tools.json ({len(TOOLS)} functions), train.jsonl ({len(train_rows)} rows), "
          f"eval.jsonl ({len(eval_rows)} rows)")


if __name__ == "__main__":
    main()
