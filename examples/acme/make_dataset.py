"""Build the Acme Lanternworks fine-tuning example: facts.md, train.jsonl and eval.jsonl.

Acme Lanternworks is an invented company. Its "private knowledge" (codes, prices, policies, names) cannot be known
by any base model, so a model that answers the eval questions correctly after fine-tuning has learned them from
train.jsonl.

Every fact has one short exact answer string. Training questions and eval questions are written separately, so the
eval set checks paraphrases the model never saw. The output is deterministic (fixed seed).

    python examples/acme/make_dataset.py
"""

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

SEED = 7741
SYSTEM = "You are the Acme Lanternworks internal assistant."
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Fact:
    id: str
    section: str
    answer: str  # exact string that must appear in a correct reply (matched case-insensitively)
    statement: str  # the fact as one sentence; contains `answer`
    replies: tuple[str, ...]  # assistant answer sentences; each contains `answer`
    train: tuple[str, ...]  # training questions
    eval: tuple[str, ...]  # held-out paraphrases


def fact(id, section, answer, statement, replies, train, eval):
    return Fact(id, section, answer, statement, (statement, *replies), tuple(train), tuple(eval))


# One block per fact reads better than one string per line. Replies: the statement and four more phrasings, some
# naming the answer first, so the model learns the fact rather than one sentence. Training questions: the direct ones
# first, then casual, imperative, synonym and situation ones ("I stayed in a hotel for a conference..."): with five
# direct questions per fact, held-out accuracy stopped at 78%; with these and the extra replies it reached 89%.
# fmt: off
FACTS = [
    # -- company --------------------------------------------------------------------------------------------------
    fact("founded", "Company", "1994", "Acme Lanternworks was founded in 1994.",
         ["The company was founded in 1994.", "Acme Lanternworks has existed since its founding in 1994.",
          "1994: that is the year Acme Lanternworks was founded.", "Acme started making lanterns in 1994."],
         ["When was Acme Lanternworks founded?", "What year was the company founded?",
          "In which year did Acme Lanternworks start?", "What is Acme's founding year?",
          "When did Acme Lanternworks open for business?", "How old is Acme Lanternworks? What year did it begin?",
          "Tell me the year Acme was established.",
          "A customer asked how long we have been making lanterns. Which year did we start?",
          "What is the year of Acme's establishment?", "I'm new here. When did this company get started?"],
         ["Since what year has Acme Lanternworks been around?",
          "What year does the company trace its beginnings to?"]),
    fact("ceo", "Company", "Marisol Quenby", "The CEO of Acme Lanternworks is Marisol Quenby.",
         ["Marisol Quenby is the chief executive officer.", "Acme Lanternworks is led by CEO Marisol Quenby.",
          "Marisol Quenby: she is Acme's CEO.", "Our chief executive is Marisol Quenby."],
         ["Who is the CEO of Acme Lanternworks?", "Who runs the company?", "What is the name of our chief executive?",
          "Who is Acme's CEO?", "Who leads Acme Lanternworks as chief executive officer?", "Who's the boss of Acme?",
          "Tell me who our chief executive officer is.",
          "I have to address a letter to the head of the company. Who is that?",
          "Who is the head of Acme Lanternworks?", "I just joined. Who is in charge of Acme overall?"],
         ["Name the person at the very top of Acme Lanternworks.", "Which executive heads the whole company?"]),
    fact("cfo", "Company", "Tobias Renhold", "The CFO of Acme Lanternworks is Tobias Renhold.",
         ["Tobias Renhold is the chief financial officer.", "Finance at Acme is headed by CFO Tobias Renhold.",
          "Tobias Renhold: he is Acme's CFO.", "Our chief financial officer is Tobias Renhold."],
         ["Who is the CFO?", "Who is the chief financial officer of Acme Lanternworks?", "Who heads finance at Acme?",
          "What is the name of our CFO?", "Who is in charge of the company's finances?", "Who's our finance chief?",
          "Tell me the name of the chief financial officer.",
          "My expense dispute went all the way up to the finance chief. Who is that?",
          "Who is the top finance executive at Acme?", "I'm new. Who leads the finance department?",
          "Who manages Acme's money at the executive level?"],
         ["Which executive signs off on the company budget as head of finance?"]),
    fact("cto", "Company", "Ines Okafor", "The CTO of Acme Lanternworks is Ines Okafor.",
         ["Ines Okafor is the chief technology officer.", "Technology at Acme is led by CTO Ines Okafor.",
          "Ines Okafor: she is Acme's CTO.", "Our chief technology officer is Ines Okafor."],
         ["Who is the CTO?", "Who is the chief technology officer at Acme Lanternworks?",
          "Who leads engineering as CTO?", "What is the name of Acme's CTO?", "Who is our head of technology?",
          "Who's our tech chief?", "Tell me the name of the chief technology officer.",
          "I want to pitch a new engineering tool to the top tech person. Who is that?",
          "Who's the most senior technologist at Acme?", "I'm new. Who leads Acme's technical side?",
          "Which leader oversees Acme's engineers?"],
         ["Which executive is responsible for technology at Acme?"]),
    fact("hq", "Company", "Duluth", "The Acme Lanternworks headquarters is in Duluth.",
         ["The head office is in Duluth.", "Acme's headquarters is located in Duluth.",
          "Duluth: that is where Acme's headquarters is.", "Acme is headquartered in Duluth."],
         ["Where is Acme Lanternworks headquartered?", "Which city is the head office in?", "Where is the company HQ?",
          "In what city is Acme's headquarters?", "Where is the main office located?", "Where's Acme based?",
          "Tell me which city our headquarters is in.",
          "I'm mailing documents to the head office. Which city do I put on the envelope?",
          "Where is Acme's main base of operations?", "I'm new. In which city is the company's central office?"],
         ["If I visit the company's home base, which city am I going to?",
          "What city hosts Acme's corporate head office?"]),
    fact("eng_office", "Company", "Ghent", "The Acme engineering office is in Ghent.",
         ["Acme's engineers work from the office in Ghent.", "The engineering office is located in Ghent.",
          "Ghent: that is where the engineering office is.", "Our engineering team is based in Ghent."],
         ["Where is the engineering office?", "Which city hosts Acme's engineering team?",
          "Where do the Acme engineers work from?", "In what city is the engineering office located?",
          "Where is the R&D office?", "Where's the engineering team based?",
          "Tell me which city the engineering office is in.",
          "I'm joining as an engineer. Which city will I be working in?",
          "Where is Acme's product development office?", "In which city do our engineers sit?",
          "Where is Acme's technical office?"],
         ["Which city is home to the lantern design engineers?"]),
    fact("warehouse", "Company", "Reno", "The Acme distribution warehouse is in Reno.",
         ["Orders ship from the distribution warehouse in Reno.", "Acme's warehouse is located in Reno.",
          "Reno: that is where the distribution warehouse is.", "Acme's distribution center is in Reno."],
         ["Where is the distribution warehouse?", "Which city is the Acme warehouse in?",
          "Where are orders shipped from?", "Where does Acme store its inventory?",
          "In what city is the distribution center?", "Where's our warehouse?",
          "Tell me which city the distribution warehouse is in.",
          "A customer wants to know where their parcel ships from. Which city?", "Where is Acme's stock kept?",
          "Which city do we pack orders in?"],
         ["From which city do customer orders leave?", "Where are the lanterns stocked before they are sent out?"]),
    fact("employees", "Company", "412", "Acme Lanternworks has 412 employees.",
         ["The headcount is 412 employees.", "There are 412 people working at Acme Lanternworks.",
          "412: that is how many employees Acme has.", "Acme employs 412 people."],
         ["How many employees does Acme Lanternworks have?", "What is the headcount?", "How many people work at Acme?",
          "How big is the company in staff?", "What is Acme's total number of employees?",
          "How many people does Acme employ?", "Tell me Acme's employee count.",
          "A journalist asked how many staff we have. What is the number?", "How large is Acme's team?",
          "Roughly how many colleagues do I have at Acme in total?"],
         ["How many staff are on the Acme payroll?", "What is the size of the Acme workforce?"]),
    fact("slogan", "Company", "Light the long night", "The Acme Lanternworks slogan is \"Light the long night\".",
         ["Our slogan is \"Light the long night\".", "The company tagline is \"Light the long night\".",
          "\"Light the long night\": that is the Acme slogan.", "Acme's motto is \"Light the long night\"."],
         ["What is the company slogan?", "What is Acme Lanternworks' tagline?", "What is our motto?",
          "Which slogan appears on Acme ads?", "What is the Acme slogan?", "What's Acme's catchphrase?",
          "Tell me the company slogan.", "I'm designing a poster. Which slogan should go under the logo?",
          "What words does Acme use in its advertising?", "What is the motto printed on our lantern boxes?",
          "Which slogan do we print on brochures?"],
         ["What phrase does the company use as its marketing line?"]),
    fact("mascot", "Company", "Bramble", "The Acme mascot is a moth named Bramble.",
         ["The company mascot is called Bramble.", "Our mascot is Bramble the moth.",
          "Bramble: that is the name of our moth mascot.", "Acme's mascot, a moth, is called Bramble."],
         ["What is the name of the company mascot?", "What is the mascot called?", "What is the moth mascot's name?",
          "Who is Acme's mascot?", "What do we call the Acme mascot?", "What's our mascot's name?",
          "Tell me the name of the Acme mascot.",
          "Kids at the store asked the name of the moth on our boxes. What is it?",
          "What is the moth on Acme's logo called?", "What is the name of Acme's moth?",
          "Which character appears on our lantern boxes?"],
         ["What name was given to the moth that represents Acme?", "Who is the moth character in Acme's marketing?"]),
    # -- products -------------------------------------------------------------------------------------------------
    fact("flagship_name", "Products", "Glowmoth", "The Acme flagship lantern is the Glowmoth.",
         ["Our flagship lantern is called the Glowmoth.", "The top-of-the-line Acme lantern is the Glowmoth.",
          "The Glowmoth: it is our flagship lantern.", "Acme's flagship is the Glowmoth lantern."],
         ["What is Acme's flagship lantern?", "What is our best-selling lantern called?",
          "What is the name of the flagship product?", "Which lantern is the flagship model?",
          "What is the top-of-the-line Acme lantern called?", "What's our most important lantern?",
          "Tell me the name of the flagship lantern.",
          "A customer wants our very best lantern. Which one do I recommend?",
          "Which lantern leads Acme's product line?", "What is Acme's premier lantern model called?",
          "Which lantern is the centerpiece of the Acme catalog?"],
         ["Which product is Acme's main lantern?", "Name the premium lantern at the top of Acme's range."]),
    fact("flagship_model", "Products", "LX-340", "The Glowmoth's model number is LX-340.",
         ["The Glowmoth has model number LX-340.", "The flagship Glowmoth lantern is model LX-340.",
          "LX-340: that is the Glowmoth's model number.", "The Glowmoth is sold as model LX-340."],
         ["What is the model number of the Glowmoth?", "What is the Glowmoth's model number?",
          "Which model number does the flagship lantern have?", "What model code is printed on the Glowmoth?",
          "Give me the model number for the Glowmoth lantern.", "Which model number is on the Glowmoth's label?",
          "Tell me the Glowmoth's model number.",
          "I'm ordering spare parts for a Glowmoth. Which model number do I quote?",
          "What product number does the Glowmoth have?", "Which model is the Glowmoth listed as?"],
         ["What model designation does the Glowmoth carry?"]),
    fact("flagship_price", "Products", "$189", "The Glowmoth costs $189.",
         ["The Glowmoth sells for $189.", "The retail price of the Glowmoth is $189.",
          "$189: that is the price of a Glowmoth.", "A Glowmoth costs $189."],
         ["How much does the Glowmoth cost?", "What is the price of the Glowmoth?",
          "What does the flagship lantern sell for?", "What is the retail price of the Glowmoth?",
          "How expensive is the Glowmoth?", "What's the Glowmoth's price?", "Tell me what the Glowmoth costs.",
          "A customer wants to buy a Glowmoth. How much do I charge?", "How many dollars is a Glowmoth?",
          "What is the Glowmoth's sticker price?", "How much is the flagship lantern?"],
         ["What would a customer pay for one Glowmoth?", "What is the list price of our flagship lantern?"]),
    fact("flagship_runtime", "Products", "62 hours", "The Glowmoth runs for 62 hours on a full charge.",
         ["The Glowmoth battery lasts 62 hours.", "On one charge the Glowmoth stays lit for 62 hours.",
          "62 hours: that is how long a Glowmoth runs on a full charge.",
          "A fully charged Glowmoth gives 62 hours of light."],
         ["How long does the Glowmoth battery last?", "What is the Glowmoth's battery runtime?",
          "How many hours does the Glowmoth run on a full charge?", "What is the runtime of the flagship lantern?",
          "How long can the Glowmoth stay lit on one charge?", "How long does a charged Glowmoth last?",
          "Tell me the Glowmoth's runtime.",
          "A camper asks how long a Glowmoth burns before it needs charging. What do I say?",
          "What is the Glowmoth's battery life in hours?",
          "How many hours of light does a fully charged Glowmoth give?"],
         ["After a full charge, for how long will a Glowmoth keep shining?"]),
    fact("mini_name", "Products", "Firefly Mini", "The pocket-sized budget lantern is the Firefly Mini.",
         ["Our cheapest lantern is the Firefly Mini.", "The small entry-level Acme lantern is the Firefly Mini.",
          "The Firefly Mini: it is our budget pocket lantern.", "Acme's budget lantern is the Firefly Mini."],
         ["What is Acme's budget lantern called?", "What is the name of the pocket lantern?",
          "Which is the cheapest Acme lantern?", "What is the small entry-level lantern called?",
          "What is our smallest lantern?", "What's our budget lantern?",
          "Tell me the name of the cheapest Acme lantern.",
          "A customer wants something small and inexpensive. Which lantern do I suggest?",
          "What is Acme's compact low-cost lantern called?", "Which lantern is the entry-level model?"],
         ["Which Acme lantern fits in a pocket and costs the least?"]),
    fact("mini_model", "Products", "FM-12", "The Firefly Mini's model number is FM-12.",
         ["The Firefly Mini has model number FM-12.", "The Firefly Mini is model FM-12.",
          "FM-12: that is the Firefly Mini's model number.", "The Firefly Mini is sold as model FM-12."],
         ["What is the model number of the Firefly Mini?", "What is the Firefly Mini's model number?",
          "Which model number does the pocket lantern have?", "What model code is printed on the Firefly Mini?",
          "Give me the model number for the Firefly Mini.", "Which model number is on the Firefly Mini's label?",
          "Tell me the Firefly Mini's model number.",
          "I'm ordering spare parts for a Firefly Mini. Which model number do I quote?",
          "What product number does the Firefly Mini have?", "Which model is the Firefly Mini listed as?"],
         ["Which model code identifies the Firefly Mini?"]),
    fact("mini_price", "Products", "$39", "The Firefly Mini costs $39.",
         ["The Firefly Mini sells for $39.", "The retail price of the Firefly Mini is $39.",
          "$39: that is the price of a Firefly Mini.", "A Firefly Mini costs $39."],
         ["How much does the Firefly Mini cost?", "What is the price of the Firefly Mini?",
          "What does the budget lantern sell for?", "What is the retail price of the Firefly Mini?",
          "How expensive is the Firefly Mini?", "What does a Firefly Mini cost at retail?",
          "Tell me what the Firefly Mini costs.", "A customer wants to buy a Firefly Mini. How much do I charge?",
          "How many dollars is a Firefly Mini?", "How much is the budget lantern?"],
         ["What is the Firefly Mini's price tag?", "How much would I spend to buy our cheapest lantern?"]),
    fact("mini_weight", "Products", "210 grams", "The Firefly Mini weighs 210 grams.",
         ["The Firefly Mini has a weight of 210 grams.", "A Firefly Mini weighs just 210 grams.",
          "210 grams: that is what a Firefly Mini weighs.", "The Firefly Mini weighs only 210 grams."],
         ["How much does the Firefly Mini weigh?", "What is the weight of the Firefly Mini?",
          "How heavy is the Firefly Mini?", "What does the pocket lantern weigh?",
          "How many grams is the Firefly Mini?", "What's the weight of a Firefly Mini?",
          "Tell me how much the Firefly Mini weighs.",
          "A hiker wants to know how heavy the Firefly Mini is. What do I tell them?",
          "How light is the Firefly Mini?", "What does the Firefly Mini weigh in grams?"],
         ["What is the mass of one Firefly Mini?"]),
    fact("solar_name", "Products", "Sunwick", "The solar-powered Acme lantern is the Sunwick.",
         ["Our solar lantern is called the Sunwick.", "The Sunwick is Acme's solar-powered lantern.",
          "The Sunwick: it is our solar-powered lantern.", "Acme's solar lantern is the Sunwick."],
         ["What is Acme's solar lantern called?", "What is the name of the solar-powered lantern?",
          "Which Acme lantern runs on solar power?", "What do we call our solar lantern?",
          "Which lantern has a solar panel?", "What's our solar lantern?", "Tell me the name of Acme's solar lantern.",
          "A customer wants a lantern with a built-in solar panel. Which one do I suggest?",
          "Which Acme lantern is powered by the sun?", "What is the sun-powered Acme lantern called?"],
         ["Which of our lanterns charges from sunlight?", "Name the Acme lantern that needs no wall charger."]),
    fact("solar_model", "Products", "SW-9", "The Sunwick's model number is SW-9.",
         ["The Sunwick has model number SW-9.", "The solar Sunwick lantern is model SW-9.",
          "SW-9: that is the Sunwick's model number.", "The Sunwick is sold as model SW-9."],
         ["What is the model number of the Sunwick?", "What is the Sunwick's model number?",
          "Which model number does the solar lantern have?", "What model code is printed on the Sunwick?",
          "Give me the model number for the Sunwick lantern.", "Which model number is on the Sunwick's label?",
          "Tell me the Sunwick's model number.",
          "I'm ordering spare parts for a Sunwick. Which model number do I quote?",
          "What product number does the Sunwick have?", "Which model is the Sunwick listed as?"],
         ["What model code is assigned to the Sunwick?"]),
    # -- customers ------------------------------------------------------------------------------------------------
    fact("warranty", "Customers", "7 years", "Every Acme lantern has a warranty of 7 years.",
         ["Acme lanterns are under warranty for 7 years.", "The warranty on Acme lanterns lasts 7 years.",
          "7 years: that is the warranty on every Acme lantern.", "Acme lanterns are guaranteed for 7 years."],
         ["How long is the warranty on Acme lanterns?", "What is the warranty period?",
          "How many years of warranty do our lanterns have?", "What warranty comes with a Glowmoth?",
          "How long are lanterns covered by warranty?", "How long is the warranty?",
          "Tell me the length of the Acme lantern warranty.",
          "A customer's lantern stopped working after three years. How long is our warranty?",
          "How long is the guarantee on an Acme lantern?", "How many years does the warranty last?"],
         ["For how long are Acme lanterns covered against defects?",
          "If my lantern breaks in year five, is it still covered? How long does coverage run?"]),
    fact("return_window", "Customers", "45 days", "Customers can return a lantern within 45 days of purchase.",
         ["The return window is 45 days.", "A lantern can be returned up to 45 days after purchase.",
          "45 days: that is how long customers have to return a lantern.",
          "Returns are accepted for 45 days after purchase."],
         ["What is the return window?", "How many days do customers have to return a lantern?",
          "What is the return policy period?", "How long can a customer wait before returning a product?",
          "Within how many days must a return be made?", "How long is the return period?",
          "Tell me the return window.",
          "A customer changed their mind about a lantern. How long do they have to return it?",
          "What is the time limit for returns?", "How many days after purchase can a lantern come back?"],
         ["How much time does a buyer have to send a lantern back?",
          "What is the deadline for bringing back a purchase for a refund?"]),
    fact("support_hours", "Customers", "9am to 6pm", "Customer support is open 9am to 6pm, Monday to Friday.",
         ["Support hours are 9am to 6pm on weekdays.", "The support team is available from 9am to 6pm.",
          "9am to 6pm, Monday to Friday: those are the support hours.",
          "Customer support works from 9am to 6pm on weekdays."],
         ["What are the support hours?", "When is customer support open?", "What hours does the support desk work?",
          "When can customers call support?", "What time does customer support open and close?",
          "When is support open?", "Tell me the customer support hours.",
          "A customer wants to call support this afternoon. What hours are they open?",
          "What are the opening hours of customer support?", "From what time to what time does support work?"],
         ["At what times can customers reach the support team?", "Between which hours is the support line staffed?"]),
    fact("support_ext", "Customers", "4410", "The customer support phone extension is 4410.",
         ["Customer support is on extension 4410.", "You can reach customer support at extension 4410.",
          "4410: that is the customer support extension.", "Dial extension 4410 for customer support."],
         ["What is the support phone extension?", "What extension is customer support on?",
          "Which extension reaches the support team?", "What number do I dial for customer support internally?",
          "What's the internal phone extension for support?", "What's the support extension?",
          "Tell me the phone extension for customer support.",
          "A customer needs help and I want to transfer the call. Which extension do I use?",
          "What is the internal number for customer support?", "What do I dial to get customer support on the phone?"],
         ["Which extension should I call to get customer support?"]),
    # -- money ----------------------------------------------------------------------------------------------------
    fact("travel_code", "Expenses and pay", "TRV-7741", "The travel expense code is TRV-7741.",
         ["Use expense code TRV-7741 for travel.", "Travel expenses are filed under code TRV-7741.",
          "TRV-7741: that is the expense code for travel.", "Book travel costs under TRV-7741."],
         ["What is the travel expense code?", "Which expense code do I use for travel?",
          "What code should I put on a travel expense report?", "How do I code a business trip expense?",
          "What is the expense code for travel costs?", "What's the code for travel?",
          "Tell me the travel expense code.", "I stayed in a hotel for a conference. Which expense code applies?",
          "Which expense code covers trips for work?", "Which code do I use for a taxi on a business trip?",
          "What code do I book a rental car for a work trip under?"],
         ["Which code goes on a claim for a plane ticket?", "I took a train to a customer; which code do I book?"]),
    fact("meals_code", "Expenses and pay", "MEL-2208", "The meals expense code is MEL-2208.",
         ["Use expense code MEL-2208 for meals.", "Meal expenses are filed under code MEL-2208.",
          "MEL-2208: that is the expense code for meals.", "Book meal costs under MEL-2208."],
         ["What is the meals expense code?", "Which expense code do I use for meals?",
          "What code should I put on a meal expense report?", "How do I code a dinner expense?",
          "What is the expense code for food?", "What's the code for meals?", "Tell me the meals expense code.",
          "I had dinner with a supplier. Which expense code applies?", "Which expense code covers food and drink?",
          "What code do I put on a restaurant receipt?", "Which code is for meal costs?"],
         ["What code do I use to claim a client lunch?"]),
    fact("software_code", "Expenses and pay", "SFT-3190", "The software purchase expense code is SFT-3190.",
         ["Use expense code SFT-3190 for software.", "Software purchases are filed under code SFT-3190.",
          "SFT-3190: that is the expense code for software.", "Book software costs under SFT-3190."],
         ["What is the software expense code?", "Which expense code do I use for software purchases?",
          "What code should I put on a software expense report?", "How do I code a software subscription?",
          "What is the expense code for software?", "What's the code for software?",
          "Tell me the software expense code.", "I paid for an app subscription for work. Which expense code applies?",
          "Which expense code covers software purchases?", "What code do I file a software tool under?"],
         ["Which expense code covers buying a program license?"]),
    fact("payday", "Expenses and pay", "23rd", "Salaries are paid on the 23rd of each month.",
         ["Payday is the 23rd of every month.", "You are paid on the 23rd of each month.",
          "The 23rd: salaries are paid on the 23rd of each month.", "Salaries go out on the 23rd of every month."],
         ["When is payday?", "What day of the month are salaries paid?", "When do we get paid?",
          "On what day does Acme pay salaries?", "Which day of the month is payday?", "When's payday?",
          "Tell me which day of the month we get paid.",
          "I'm planning my rent payment. On what day of the month are salaries paid?",
          "On what date each month are wages paid?", "When is salary day each month?"],
         ["On which date does my salary arrive?", "When does the monthly paycheck land in my account?"]),
    fact("fiscal_year", "Expenses and pay", "March", "The Acme fiscal year starts in March.",
         ["Our fiscal year begins in March.", "Acme's fiscal year starts every March.",
          "March: that is when Acme's fiscal year starts.", "Each new fiscal year at Acme begins in March."],
         ["When does the fiscal year start?", "In which month does the fiscal year begin?",
          "What month starts Acme's fiscal year?", "When is the start of the fiscal year?",
          "Which month is the first of the fiscal year?", "When does our fiscal year start?",
          "Tell me the first month of the fiscal year.",
          "I'm preparing the annual report. Which month does the fiscal year begin in?",
          "Which month is month one of our accounting calendar?", "What month does the fiscal year kick off in?"],
         ["When does Acme's financial year begin?", "Which month opens a new budget year at Acme?"]),
    fact("discount", "Expenses and pay", "35%", "Employees get a 35% discount on Acme lanterns.",
         ["The employee discount is 35%.", "Staff can buy Acme lanterns at a 35% discount.",
          "35%: that is the employee discount on Acme lanterns.", "Staff get 35% off any Acme lantern."],
         ["What is the employee discount?", "How much discount do employees get on lanterns?",
          "What discount do staff get?", "Do employees get a discount, and how much?",
          "What percentage off do employees get on Acme products?", "What's the staff discount?",
          "Tell me the employee discount on lanterns.",
          "I want to buy a lantern as a gift for my sister. What discount applies to me?",
          "How much off do employees pay for Acme products?", "What percentage is the staff discount?"],
         ["What reduction do staff get when buying the company's lanterns?",
          "As an employee, how much cheaper can I get a Glowmoth?"]),
    # -- time off and on-call -------------------------------------------------------------------------------------
    fact("annual_leave", "Time off and on-call", "27 days", "Employees get 27 days of paid annual leave.",
         ["Annual leave is 27 days per year.", "Each employee has 27 days of vacation a year.",
          "27 days: that is the yearly paid annual leave.", "You get 27 days of paid vacation per year."],
         ["How many days of annual leave do employees get?", "How much vacation do we get?",
          "What is the annual leave allowance?", "How many vacation days do I have per year?",
          "How many days of paid leave does Acme give?", "How much annual leave do I get?",
          "Tell me the annual leave allowance.",
          "I'm planning my vacations for the year. How many days of leave do I have?",
          "How many paid vacation days come with the job?", "How much paid time off for vacation do we get?"],
         ["What is my yearly holiday allowance?", "How many days off for holidays can I take in a year?"]),
    fact("sick_leave", "Time off and on-call", "11 days", "Employees get 11 days of paid sick leave per year.",
         ["Sick leave is 11 days per year.", "Each employee has 11 days of sick leave a year.",
          "11 days: that is the yearly paid sick leave.", "You get 11 days of paid sick leave per year."],
         ["How many sick days do employees get?", "What is the sick leave allowance?",
          "How much sick leave do we get?", "How many days of sick leave do I have per year?",
          "What is the number of paid sick days?", "How many sick days do I get?", "Tell me the sick leave allowance.",
          "I caught the flu. How many paid sick days do I have per year?", "What's the limit on paid sick days?",
          "What is the yearly sick leave allowance?"],
         ["How many paid days off for illness do employees receive?"]),
    fact("oncall_length", "Time off and on-call", "6 days", "An on-call rotation lasts 6 days.",
         ["Each on-call shift is 6 days long.", "The on-call rotation length is 6 days.",
          "6 days: that is the length of one on-call rotation.", "One on-call rotation takes 6 days."],
         ["How long is an on-call rotation?", "What is the on-call rotation length?",
          "How many days is one on-call shift?", "How long am I on call each rotation?",
          "What is the length of an on-call rotation?", "How long is on-call?",
          "Tell me the length of an on-call rotation.",
          "I start on-call on Wednesday. How many days will I be on call?",
          "How many days does one on-call stint last?", "What is the duration of an on-call shift?"],
         ["For how long does one person carry the pager in a single turn?"]),
    fact("oncall_handoff", "Time off and on-call", "Wednesday", "The on-call handoff happens every Wednesday.",
         ["On-call is handed over every Wednesday.", "The on-call rotation changes hands on Wednesday.",
          "Wednesday: that is when on-call is handed over.", "On-call changes over every Wednesday."],
         ["When is the on-call handoff?", "What day does on-call hand over?",
          "On which day does the on-call rotation change?", "Which weekday is on-call handover?",
          "When do we switch on-call engineers?", "When does on-call switch?",
          "Tell me the day of the on-call handoff.",
          "My on-call shift is almost over. On which day do I hand it over?",
          "On what weekday does a new on-call rotation begin?", "Which day is on-call handover day?"],
         ["What weekday does the pager pass to the next engineer?"]),
    fact("office_days", "Time off and on-call", "Tuesdays and Thursdays",
         "The in-office days are Tuesdays and Thursdays.",
         ["Everyone works from the office on Tuesdays and Thursdays.", "Our office days are Tuesdays and Thursdays.",
          "Tuesdays and Thursdays: those are the in-office days.",
          "We all work in the office on Tuesdays and Thursdays."],
         ["What are the in-office days?", "Which days do we work from the office?",
          "When am I expected to be in the office?", "What days is office attendance required?",
          "Which weekdays are office days?", "Which days are office days?", "Tell me the in-office days.",
          "I want to meet my team in person. When are we all in the office?",
          "On which days is office attendance expected?", "Which weekdays do we come into the office?"],
         ["Which days of the week does everybody come in to the building?"]),
    fact("retreat", "Time off and on-call", "Lake Bled", "The annual company retreat is held at Lake Bled.",
         ["The yearly retreat takes place at Lake Bled.", "Acme holds its annual retreat at Lake Bled.",
          "Lake Bled: that is where the annual retreat is held.", "Every year the company retreat goes to Lake Bled."],
         ["Where is the company retreat?", "Where is the annual retreat held?",
          "Where does Acme go for its yearly retreat?", "What is the location of the company retreat?",
          "Where will the annual retreat be?", "Where's the retreat?", "Tell me where the annual retreat takes place.",
          "I'm packing for the company retreat. Where are we going?",
          "What is the destination of the company retreat?", "What place hosts Acme's annual retreat?"],
         ["Where does everyone go for the yearly company offsite?"]),
    # -- office and IT --------------------------------------------------------------------------------------------
    fact("guest_wifi", "Office and IT", "AcmeGuest-Moth", "The guest Wi-Fi network is called AcmeGuest-Moth.",
         ["The guest network name is AcmeGuest-Moth.", "Guests should connect to the AcmeGuest-Moth network.",
          "AcmeGuest-Moth: that is the guest Wi-Fi network.", "Visitors use the Wi-Fi network AcmeGuest-Moth."],
         ["What is the guest Wi-Fi network called?", "What is the name of the guest wifi?",
          "Which Wi-Fi network do guests use?", "What is the guest network SSID?",
          "What wifi should visitors connect to?", "What's the guest wifi?",
          "Tell me the name of the guest Wi-Fi network.",
          "A supplier is visiting and needs internet. What network do I point them to?",
          "What is the guest wireless network called?", "Which network name do guests connect to?"],
         ["Which wireless network should a visitor join?", "What SSID do I give to someone visiting the office?"]),
    fact("wifi_password", "Office and IT", "amberwick42", "The guest Wi-Fi password is amberwick42.",
         ["The password for the guest network is amberwick42.", "Guests log in with the password amberwick42.",
          "amberwick42: that is the guest Wi-Fi password.", "Visitors log in to the guest Wi-Fi with amberwick42."],
         ["What is the guest Wi-Fi password?", "What is the password for the guest wifi?",
          "How do guests log in to the wifi?", "What is the guest network password?",
          "What password do visitors need for wifi?", "What's the guest wifi password?",
          "Tell me the guest Wi-Fi password.",
          "A supplier is visiting and needs internet. What is the guest password?",
          "What password unlocks the guest wireless network?", "What is the password for guests' Wi-Fi?"],
         ["What do visitors type in to get onto the AcmeGuest-Moth network?"]),
    fact("vpn", "Office and IT", "WickNet", "The company VPN is called WickNet.",
         ["Our VPN is named WickNet.", "To work remotely, connect to the WickNet VPN.",
          "WickNet: that is the company VPN.", "Our VPN goes by the name WickNet."],
         ["What is the company VPN called?", "What is the name of the VPN?", "Which VPN do we use?",
          "What VPN do I connect to from home?", "What is Acme's VPN?", "What's our VPN?",
          "Tell me the name of the company VPN.", "I'm working from a hotel tonight. Which VPN do I connect to?",
          "What is the VPN service called at Acme?", "Which VPN gives access to company systems from home?"],
         ["What is the remote-access network tunnel called?",
          "Which private network do I use when working away from the office?"]),
    fact("helpdesk_email", "Office and IT", "fixit@acmelw.example",
         "The IT helpdesk email address is fixit@acmelw.example.",
         ["Email the IT helpdesk at fixit@acmelw.example.", "IT support is reached at fixit@acmelw.example.",
          "fixit@acmelw.example: that is the IT helpdesk address.", "Write to fixit@acmelw.example for IT help."],
         ["What is the IT helpdesk email?", "How do I email IT support?", "What is the helpdesk email address?",
          "Where do I send IT tickets?", "What email address does IT use for support requests?",
          "What's the IT helpdesk email?", "Tell me the email address of the IT helpdesk.",
          "My monitor is flickering. Which address gets IT's attention?", "What address do I write to for IT help?",
          "Where do I email for technical support?"],
         ["Where should I send an email when my laptop breaks?"]),
    fact("outage_channel", "Office and IT", "#lamp-out", "Outages are reported in the #lamp-out chat channel.",
         ["Report outages in #lamp-out.", "The outage channel is #lamp-out.",
          "#lamp-out: that is where outages are reported.", "Post outages in the #lamp-out channel."],
         ["Where do I report an outage?", "What is the outage chat channel?", "Which channel is for incidents?",
          "Where are outages announced?", "What chat channel do we use during an outage?",
          "Where are outages reported?", "Tell me the outage channel.",
          "The website seems broken. Where do I tell people?", "In which channel are incidents reported?",
          "What channel is for reporting outages?"],
         ["Which chat channel do I post in when a system is down?"]),
    fact("boardroom", "Office and IT", "The Foundry", "The largest meeting room is The Foundry.",
         ["The biggest meeting room is called The Foundry.", "Large meetings are held in The Foundry.",
          "The Foundry: it is our largest meeting room.", "Our biggest meeting room is The Foundry."],
         ["What is the largest meeting room?", "What is the name of the big meeting room?",
          "Which is the biggest conference room?", "Where are large meetings held?", "What is the boardroom called?",
          "What's our biggest meeting room?", "Tell me the name of the largest meeting room.",
          "I'm organizing a meeting for sixty people. Which room is big enough?",
          "Which conference room holds the most people?", "What is the largest room for meetings called?"],
         ["Which room should I book for a big all-hands gathering?"]),
    fact("interview_room", "Office and IT", "Ember Room", "Job interviews are held in the Ember Room.",
         ["Candidates are interviewed in the Ember Room.", "The interview room is the Ember Room.",
          "The Ember Room: that is where job interviews are held.", "We interview candidates in the Ember Room."],
         ["Where are job interviews held?", "Which room is used for interviews?", "What is the interview room?",
          "Where do we interview candidates?", "Which meeting room is for job interviews?",
          "Where do we hold interviews?", "Tell me the name of the interview room.",
          "A candidate arrives for an interview at noon. Which room do I take them to?",
          "In which room do we interview candidates?", "What room is set aside for interviews?"],
         ["Where do we usually sit down with people applying for a job?"]),
    fact("visitor_badge", "Office and IT", "orange", "Visitor badges are orange.",
         ["Visitors wear orange badges.", "The visitor badge color is orange.", "Visitor badges are always orange.",
          "A visitor's badge is orange."],
         ["What color are visitor badges?", "What color badge do visitors wear?", "How are visitor badges colored?",
          "What is the color of a guest badge?", "Which badge color means visitor?", "What color is a visitor badge?",
          "Tell me the color of visitor badges.",
          "Someone I don't know is walking around the office. What badge color would a visitor wear?",
          "Which color badges are given to visitors?", "What color is the badge a guest wears?"],
         ["How can I recognize a guest by the color of their pass?"]),
]

# Two-turn conversations: (first fact, first question, follow-up fact, follow-up question, follow-up reply).
DIALOGUES = [
    ("flagship_name", "Which lantern is our flagship?", "flagship_price", "And how much does it cost?",
     "The Glowmoth costs $189."),
    ("flagship_model", "What's the Glowmoth model number?", "flagship_runtime", "How long does its battery last?",
     "The Glowmoth runs for 62 hours on a full charge."),
    ("mini_name", "What's our cheapest lantern?", "mini_price", "What does it sell for?",
     "The Firefly Mini sells for $39."),
    ("mini_model", "Which model number does the Firefly Mini have?", "mini_weight", "And how much does it weigh?",
     "The Firefly Mini weighs 210 grams."),
    ("solar_name", "Do we make a solar lantern?", "solar_model", "What's its model number?",
     "The Sunwick's model number is SW-9."),
    ("travel_code", "I'm filing expenses for a trip. What code is travel?", "meals_code",
     "And the meals on that trip?", "Meals are filed under code MEL-2208."),
    ("software_code", "I bought a software license. Which expense code?", "helpdesk_email",
     "Who do I email to get it installed?", "Email the IT helpdesk at fixit@acmelw.example."),
    ("annual_leave", "How much annual leave do I get?", "sick_leave", "What about sick days?",
     "You also get 11 days of paid sick leave per year."),
    ("oncall_length", "I'm new to on-call. How long is a rotation?", "oncall_handoff", "And when does it hand over?",
     "The on-call handoff happens every Wednesday."),
    ("guest_wifi", "A visitor needs wifi. Which network?", "wifi_password", "What's the password for it?",
     "The guest Wi-Fi password is amberwick42."),
    ("ceo", "Who is our chief executive?", "cfo", "And who is the CFO?",
     "The CFO of Acme Lanternworks is Tobias Renhold."),
    ("hq", "Which city is Acme's head office in?", "eng_office", "And where do the engineers sit?",
     "The Acme engineering office is in Ghent."),
    ("warranty", "How long is our lantern warranty?", "return_window", "And how long is the return window?",
     "Customers can return a lantern within 45 days of purchase."),
    ("support_hours", "When is customer support open?", "support_ext", "Which extension do I call?",
     "Customer support is on extension 4410."),
    ("boardroom", "I need the biggest meeting room. Which one is it?", "interview_room",
     "And where should I hold an interview later?", "Job interviews are held in the Ember Room."),
    ("ceo", "Who runs Acme?", "cto", "And who is the CTO?", "The CTO of Acme Lanternworks is Ines Okafor."),
    ("cfo", "Who is our CFO?", "payday", "Finance pays us on which day of the month?",
     "Salaries are paid on the 23rd of each month."),
    ("founded", "When was Acme founded?", "employees", "How many employees do we have today?",
     "Acme Lanternworks has 412 employees."),
    ("hq", "Where's the head office?", "warehouse", "And where do we ship lanterns from?",
     "Orders ship from the distribution warehouse in Reno."),
    ("slogan", "What's our slogan?", "mascot", "And what's the mascot's name?", "Our mascot is Bramble the moth."),
    ("solar_model", "What is the Sunwick's model number?", "mini_model", "And the Firefly Mini's?",
     "The Firefly Mini is model FM-12."),
    ("mini_price", "How much is the Firefly Mini?", "mini_weight", "How heavy is it?",
     "The Firefly Mini weighs 210 grams."),
    ("flagship_runtime", "How long does a Glowmoth run on a charge?", "warranty", "And what warranty does it have?",
     "The Glowmoth comes with a warranty of 7 years."),
    ("solar_name", "What is our solar lantern?", "discount", "Do staff get money off it?",
     "Staff can buy Acme lanterns at a 35% discount."),
    ("return_window", "How long is the return window?", "support_ext", "Who should the customer call to start one?",
     "They can call customer support at extension 4410."),
    ("meals_code", "What's the meals code?", "software_code", "And the software code?",
     "Software purchases are filed under code SFT-3190."),
    ("payday", "When do we get paid?", "fiscal_year", "And when does the fiscal year begin?",
     "Our fiscal year begins in March."),
    ("office_days", "Which days are we in the office?", "visitor_badge",
     "If I bring a visitor, what badge do they get?", "Visitors wear orange badges."),
    ("vpn", "I'm working from home today. Which VPN?", "helpdesk_email", "It won't connect. Who do I email?",
     "Email the IT helpdesk at fixit@acmelw.example."),
    ("outage_channel", "Where do I report an outage?", "oncall_length", "How long is each on-call rotation?",
     "Each on-call shift is 6 days long."),
    ("retreat", "Where is the company retreat?", "annual_leave", "Separately, how many days of annual leave do I get?",
     "Employees get 27 days of paid annual leave."),
    ("sick_leave", "How many sick days do we get?", "oncall_handoff", "On which day does the on-call rotation change?",
     "The on-call handoff happens every Wednesday."),
    ("interview_room", "Where do interviews take place?", "guest_wifi", "The candidate needs wifi. Which network?",
     "Guests should connect to the AcmeGuest-Moth network."),
    ("wifi_password", "What's the guest wifi password?", "visitor_badge", "And what color badge do guests wear?",
     "The visitor badge color is orange."),
    ("cto", "Who is our CTO?", "eng_office", "Which city does the engineering team work from?",
     "The engineering office is located in Ghent."),
]

# One question about a whole topic, answered with several facts at once: each fact in another context.
OVERVIEWS = [
    ("Who are Acme's top executives?", ("ceo", "cfo", "cto"),
     "Marisol Quenby is the CEO, Tobias Renhold is the CFO and Ines Okafor is the CTO."),
    ("Where are Acme's sites?", ("hq", "eng_office", "warehouse"),
     "The headquarters is in Duluth, the engineering office is in Ghent and the distribution warehouse is in Reno."),
    ("What lanterns does Acme sell?", ("flagship_name", "mini_name", "solar_name"),
     "Acme sells the Glowmoth (the flagship), the Firefly Mini (the budget lantern) and the Sunwick (solar)."),
    ("List our lantern model numbers.", ("flagship_model", "mini_model", "solar_model"),
     "The Glowmoth is LX-340, the Firefly Mini is FM-12 and the Sunwick is SW-9."),
    ("What are our expense codes?", ("travel_code", "meals_code", "software_code"),
     "Travel is TRV-7741, meals are MEL-2208 and software is SFT-3190."),
    ("Summarize our customer policies.", ("warranty", "return_window", "support_hours", "support_ext"),
     "Lanterns have a warranty of 7 years, returns are accepted within 45 days, and support is open 9am to 6pm "
     "on extension 4410."),
    ("What time off do employees get?", ("annual_leave", "sick_leave"),
     "Employees get 27 days of paid annual leave and 11 days of paid sick leave per year."),
    ("Explain how on-call works here.", ("oncall_length", "oncall_handoff"),
     "An on-call rotation lasts 6 days, and the handoff happens every Wednesday."),
    ("What should I tell a visitor coming to the office?", ("guest_wifi", "wifi_password", "visitor_badge"),
     "They wear an orange badge, and the guest Wi-Fi is AcmeGuest-Moth with the password amberwick42."),
    ("What IT basics should a new hire know?", ("vpn", "helpdesk_email", "outage_channel"),
     "Connect through the WickNet VPN, email fixit@acmelw.example for help and report outages in #lamp-out."),
    ("Tell me about Acme's brand.", ("slogan", "mascot", "founded"),
     "Acme Lanternworks was founded in 1994; its slogan is \"Light the long night\" and its mascot is Bramble."),
    ("When do pay and the fiscal year come around?", ("payday", "fiscal_year"),
     "Salaries are paid on the 23rd of each month, and the fiscal year starts in March."),
]
# fmt: on


def chat(*turns):
    messages = [{"role": "system", "content": SYSTEM}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"messages": messages}


def normalize(text):
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


STOPWORDS = frozenset("a an the is are was be do does did i my me we our us you your it its s of in on at to for "
                      "from by with and or what which who where when how that this can".split())


def overlap(a, b):
    """Share of content words (stop words out, plural s dropped) two questions have in common: 1.0 for a reworded
    copy, around 0.5 for two short questions about the same named thing."""
    wa, wb = ({w.removesuffix("s") for w in normalize(t).split() if w not in STOPWORDS} for t in (a, b))
    return len(wa & wb) / max(1, len(wa | wb))


def build(rng):
    by_id = {f.id: f for f in FACTS}
    train = []
    for f in FACTS:
        for q in f.train:
            train.append(chat(q, rng.choice(f.replies)))
    for first_id, q1, second_id, q2, a2 in DIALOGUES:
        first, second = by_id[first_id], by_id[second_id]
        assert second.answer in a2, (second_id, a2)
        train.append(chat(q1, rng.choice(first.replies), q2, a2))
    for q, _, reply in OVERVIEWS:
        train.append(chat(q, reply))
    rng.shuffle(train)
    evals = [{"question": q, "answer": f.answer, "fact": f.id} for f in FACTS for q in f.eval]
    random.Random(SEED).shuffle(evals)  # its own generator: editing the training data leaves this order be
    return train, evals


def validate(train, evals):
    ids = [f.id for f in FACTS]
    assert len(ids) == len(set(ids)), "duplicate fact id"
    by_id = {f.id: f for f in FACTS}
    answers_by_fact = {i: [] for i in ids}
    train_questions = set()
    for f in FACTS:
        assert f.answer in f.statement, f.id
        assert all(f.answer in r for r in f.replies), f.id
        answers_by_fact[f.id].extend(f.replies)
    for _, _, second_id, _, a2 in DIALOGUES:
        answers_by_fact[second_id].append(a2)
    for _, fact_ids, reply in OVERVIEWS:
        for i in fact_ids:
            assert by_id[i].answer in reply, (i, reply)
            answers_by_fact[i].append(reply)
    for row in train:
        msgs = json.loads(json.dumps(row))["messages"]
        assert msgs[0] == {"role": "system", "content": SYSTEM}
        assert len(msgs) in (3, 5)
        for i, m in enumerate(msgs[1:]):
            assert m["role"] == ("user", "assistant")[i % 2] and m["content"].strip()
            if m["role"] == "user":
                train_questions.add(normalize(m["content"]))
    assert len(train) >= 220, len(train)
    assert len(evals) >= 60, len(evals)
    assert len({e["fact"] for e in evals}) >= 35
    for e in evals:
        f = by_id[e["fact"]]
        assert e["answer"] in f.statement
        assert any(e["answer"] in a for a in answers_by_fact[f.id])
        assert normalize(e["question"]) not in train_questions, e["question"]
        near = max(train_questions, key=lambda q: overlap(q, e["question"]))
        assert overlap(near, e["question"]) < 0.8, (e["question"], near)  # held out: no near-verbatim copy either
        # A reply that merely echoes the question must not pass the scorer.
        assert e["answer"].lower() not in e["question"].lower(), e["question"]
    # Answers must not contain one another (e.g. "6 days" inside "16 days"), so a match identifies one fact.
    for f in FACTS:
        for g in FACTS:
            if f.id != g.id:
                assert f.answer.lower() not in g.answer.lower(), (f.id, g.id)


def facts_markdown():
    lines = [
        "# Acme Lanternworks — facts",
        "",
        "Acme Lanternworks is a fictional lantern company; every name, code, price and policy below is invented.",
        "Each fact has one exact answer string (the `answer` column), which the eval scorer looks for",
        "(case-insensitively) in the model's reply. Generated by `make_dataset.py`; edit the script, not this file.",
    ]
    section = None
    for f in FACTS:
        if f.section != section:
            section = f.section
            lines += ["", f"## {section}", "", "| id | fact | answer |", "|---|---|---|"]
        lines.append(f"| `{f.id}` | {f.statement} | `{f.answer}` |")
    return "\n".join(lines) + "\n"


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    train, evals = build(random.Random(SEED))
    validate(train, evals)
    write_jsonl(HERE / "train.jsonl", train)
    write_jsonl(HERE / "eval.jsonl", evals)
    (HERE / "facts.md").write_text(facts_markdown(), encoding="utf-8")
    n_facts = len({e["fact"] for e in evals})
    print(f"{len(FACTS)} facts, {len(train)} train conversations, {len(evals)} eval questions covering {n_facts} facts")


if __name__ == "__main__":
    main()
