"""
The short stories of `spidr-hf slm-benchmark`'s story cloze: situations in opposite pairs (hungry and full, tired
and rested, ...), each with stories that set it up (two sentences about a named person) and endings that follow from
it. A story ends coherently with an ending of its own situation; with one of the opposite situation the ending
contradicts the story (the sSC-like set), with one of another pair's situation it changes the topic (the tSC-like set).

Written for this project, in plain words flite speaks; `{name}` is a person's name, `{he}`, `{his}` and `{him}` the
pronouns that go with it.
"""

import re
from typing import NamedTuple


class Situation(NamedTuple):
    stories: tuple[str, ...]  # what sets the situation up: two sentences
    endings: tuple[str, ...]  # what follows from it: one sentence


# (situation, its opposite) pairs; every situation's endings contradict its opposite's stories
SITUATIONS: dict[str, Situation] = {
    "hungry": Situation(
        (
            "{name} had not eaten anything all day. By the evening {he} was very hungry.",
            "{name} skipped lunch at work. {his} stomach was growling loudly.",
        ),
        (
            "{he} ate a big plate of pasta.",
            "{he} cooked a large meal right away.",
            "{he} ordered two pizzas for dinner.",
            "{he} ate every bite of the food.",
            "{he} made three sandwiches.",
            "{he} ran to the kitchen to eat.",
        ),
    ),
    "full": Situation(
        (
            "{name} ate a huge lunch with friends. {he} could not eat another bite.",
            "{name} had three plates at the dinner party. {his} stomach felt very full.",
        ),
        (
            "{he} said no to the dessert.",
            "{he} pushed the plate away.",
            "{he} skipped dinner that night.",
            "{he} did not want any more food.",
            "{he} left the cake on the table.",
            "{he} refused a second helping.",
        ),
    ),
    "tired": Situation(
        (
            "{name} worked until midnight. {he} was exhausted and could barely stand.",
            "{name} ran a long race in the morning. By noon {he} was very tired.",
        ),
        (
            "{he} fell asleep on the sofa.",
            "{he} went to bed very early.",
            "{he} took a long nap.",
            "{he} slept for ten hours.",
            "{he} yawned and closed {his} eyes.",
            "{he} lay down and rested.",
        ),
    ),
    "rested": Situation(
        (
            "{name} slept for ten hours last night. {he} woke up full of energy.",
            "{name} spent a calm week at the beach. {he} felt fresh and strong.",
        ),
        (
            "{he} went for a long run.",
            "{he} cleaned the whole house.",
            "{he} worked hard all day.",
            "{he} stayed up late reading.",
            "{he} jumped out of bed.",
            "{he} started a new project.",
        ),
    ),
    "cold": Situation(
        (
            "It was snowing outside when {name} woke up. {his} room was freezing.",
            "{name} forgot {his} coat on a winter day. {he} was shivering at the bus stop.",
        ),
        (
            "{he} put on a thick wool sweater.",
            "{he} made a cup of hot tea.",
            "{he} lit a fire to get warm.",
            "{he} wrapped up in a blanket.",
            "{he} wore two pairs of socks.",
            "{he} rubbed {his} hands together.",
        ),
    ),
    "hot": Situation(
        (
            "It was the hottest day of the summer. {name} was sweating in the sun.",
            "{name} sat in a room with no air. The heat was hard to bear.",
        ),
        (
            "{he} jumped into the cool pool.",
            "{he} drank a glass of cold water.",
            "{he} turned on the fan.",
            "{he} ate an ice cream in the shade.",
            "{he} took off {his} jacket.",
            "{he} opened all the windows.",
        ),
    ),
    "rain": Situation(
        (
            "{name} looked out of the window. Heavy rain was falling on the street.",
            "{name} heard thunder on the way home. The rain started to pour.",
        ),
        (
            "{he} opened a large umbrella.",
            "{he} came home soaking wet.",
            "{he} waited under a roof.",
            "{he} put on {his} rain boots.",
            "{he} stayed inside all afternoon.",
            "{he} ran from puddle to puddle.",
        ),
    ),
    "sunny": Situation(
        (
            "{name} looked out of the window. The sun was shining over the town.",
            "The sky was clear and blue. {name} felt the warm sun on {his} face.",
        ),
        (
            "{he} went to the park for a picnic.",
            "{he} put on {his} sunglasses.",
            "{he} walked to the beach.",
            "{he} sat in the garden.",
            "{he} dried the washing outside.",
            "{he} rode {his} bike by the lake.",
        ),
    ),
    "sick": Situation(
        (
            "{name} woke up with a fever. {his} throat hurt and {he} could not stop coughing.",
            "{name} felt sick after dinner. {his} head was hot and aching.",
        ),
        (
            "{he} stayed in bed all day.",
            "{he} called the doctor.",
            "{he} took some medicine.",
            "{he} missed school that week.",
            "{he} drank hot soup in bed.",
            "{he} slept with a wet cloth on {his} head.",
        ),
    ),
    "healthy": Situation(
        (
            "{name} felt strong and well that morning. The fever was gone at last.",
            "The doctor said {name} was in perfect health. {he} felt great.",
        ),
        (
            "{he} went back to work.",
            "{he} played football with friends.",
            "{he} ran five miles.",
            "{he} threw away the medicine.",
            "{he} climbed the hill behind the house.",
            "{he} danced at the party.",
        ),
    ),
    "rich": Situation(
        (
            "{name} won the lottery last week. {he} suddenly had a lot of money.",
            "{name} got a large bonus at work. {his} bank account was full.",
        ),
        (
            "{he} spent it all on toys.",
            "{he} paid for dinner for everyone.",
            "{he} took a trip around the world.",
            "{he} bought a big house.",
            "{he} gave money to {his} friends.",
            "{he} booked the best hotel in town.",
        ),
    ),
    "poor": Situation(
        (
            "{name} lost {his} job last month. {he} had almost no money left.",
            "{name} spent all {his} savings on rent. {his} wallet was empty.",
        ),
        (
            "{he} sold {his} old bike.",
            "{he} asked a friend for a loan.",
            "{he} ate plain rice for a week.",
            "{he} looked for a new job.",
            "{he} walked instead of taking the bus.",
            "{he} skipped lunch to save money.",
        ),
    ),
    "good_news": Situation(
        (
            "{name} got a letter from the university. {he} had been accepted.",
            "{name} passed the hardest exam of the year. {his} parents were proud.",
        ),
        (
            "{he} danced around the room.",
            "{he} called all {his} friends to celebrate.",
            "{he} told everyone {he} met.",
            "{he} could not stop smiling.",
            "{he} sang on the way home.",
            "{he} hugged {his} mother.",
        ),
    ),
    "bad_news": Situation(
        (
            "{name} heard that {his} old dog had died. The news broke {his} heart.",
            "{name} failed the most important exam of the year. {his} plans were ruined.",
        ),
        (
            "{he} cried alone in {his} room.",
            "{he} did not want to talk to anyone.",
            "{he} stared sadly at the wall.",
            "{he} stayed home feeling gloomy.",
            "{he} could not sleep that night.",
            "{he} felt empty inside.",
        ),
    ),
    "late": Situation(
        (
            "{name} did not hear the alarm in the morning. {he} was already an hour late.",
            "{name} got stuck in heavy traffic. The meeting had started without {him}.",
        ),
        (
            "{he} ran all the way to the office.",
            "{he} said sorry to {his} boss.",
            "{he} missed the start of the meeting.",
            "{he} rushed in through the door.",
            "{he} skipped breakfast to save time.",
            "{he} jumped into a taxi.",
        ),
    ),
    "early": Situation(
        (
            "{name} woke up before dawn. {he} arrived at the station an hour early.",
            "{name} left home with plenty of time. {he} was the first one there.",
        ),
        (
            "{he} waited calmly for the others.",
            "{he} read a book on a bench.",
            "{he} had time for a coffee.",
            "{he} chose the best seat.",
            "{he} watched the empty platform.",
            "{he} walked slowly around the block.",
        ),
    ),
    "lost": Situation(
        (
            "{name} could not find {his} keys anywhere. {he} searched the whole house.",
            "The dog of {name} ran away in the storm. {he} looked for it all night.",
        ),
        (
            "{he} had to call a locksmith.",
            "{he} put up posters in the street.",
            "{he} kept searching for hours.",
            "{he} sat on the steps, worried.",
            "{he} asked the neighbours for help.",
            "{he} looked under every bed.",
        ),
    ),
    "found": Situation(
        (
            "{name} finally found {his} keys under the sofa. {he} was relieved.",
            "The dog of {name} came back home at dawn. It was wet but safe.",
        ),
        (
            "{he} unlocked the door at once.",
            "{he} hugged the dog tightly.",
            "{he} thanked everyone who helped.",
            "{he} stopped worrying.",
            "{he} gave the dog a bath.",
            "{he} laughed with relief.",
        ),
    ),
    "won": Situation(
        (
            "{name} played in the chess final. {he} won the game in ten moves.",
            "The team of {name} scored in the last minute. They won the cup.",
        ),
        (
            "{he} lifted the trophy high.",
            "{he} celebrated with the team.",
            "{he} received a gold medal.",
            "{he} cheered with joy.",
            "{he} gave a happy speech.",
            "{he} waved to the crowd.",
        ),
    ),
    "lost_game": Situation(
        (
            "{name} played in the chess final. {he} lost the game badly.",
            "The team of {name} missed every chance. They lost the final.",
        ),
        (
            "{he} walked off the field in silence.",
            "{he} shook hands with the winner.",
            "{he} went home disappointed.",
            "{he} promised to train harder.",
            "{he} hid {his} face in {his} hands.",
            "{he} sat alone in the locker room.",
        ),
    ),
    "noisy": Situation(
        (
            "The neighbours of {name} played loud music all night. {he} could not sleep.",
            "A building site opened next to the house of {name}. The noise was terrible.",
        ),
        (
            "{he} put in ear plugs.",
            "{he} knocked on their door to complain.",
            "{he} closed all the windows.",
            "{he} moved to a quieter room.",
            "{he} covered {his} ears with a pillow.",
            "{he} called the police about the noise.",
        ),
    ),
    "quiet": Situation(
        (
            "{name} spent the weekend in a cabin in the woods. It was perfectly quiet.",
            "The house of {name} was silent after the guests left. The street was calm.",
        ),
        (
            "{he} slept deeply all night.",
            "{he} read in peace by the fire.",
            "{he} listened to the birds.",
            "{he} enjoyed the silence.",
            "{he} wrote letters in the calm.",
            "{he} heard only the wind.",
        ),
    ),
    "clean": Situation(
        (
            "{name} spent the whole day tidying the flat. Every room was spotless.",
            "{name} washed the floors and the windows. The house was shining.",
        ),
        (
            "{he} invited friends to see the flat.",
            "{he} sat proudly on the clean sofa.",
            "{he} put fresh flowers on the table.",
            "{he} took off {his} shoes at the door.",
            "{he} made the bed neatly.",
            "{he} lit a candle in the tidy room.",
        ),
    ),
    "dirty": Situation(
        (
            "{name} had not cleaned the flat for weeks. Dirty dishes covered the table.",
            "{name} came back from the muddy field. {his} clothes were filthy.",
        ),
        (
            "{he} scrubbed the floor for hours.",
            "{he} washed the pile of dishes.",
            "{he} put {his} clothes in the machine.",
            "{he} took a long hot shower.",
            "{he} swept the dust out of the door.",
            "{he} threw away the old rubbish.",
        ),
    ),
}
OPPOSITES = (
    ("hungry", "full"),
    ("tired", "rested"),
    ("cold", "hot"),
    ("rain", "sunny"),
    ("sick", "healthy"),
    ("rich", "poor"),
    ("good_news", "bad_news"),
    ("late", "early"),
    ("lost", "found"),
    ("won", "lost_game"),
    ("noisy", "quiet"),
    ("clean", "dirty"),
)
# Names with the pronouns that go with them
PEOPLE = (
    ("Tom", "he"),
    ("Anna", "she"),
    ("Mike", "he"),
    ("Lucy", "she"),
    ("Jack", "he"),
    ("Emma", "she"),
    ("Paul", "he"),
    ("Mary", "she"),
    ("John", "he"),
    ("Sara", "she"),
    ("Peter", "he"),
    ("Kate", "she"),
)
PRONOUNS = {"he": {"he": "he", "his": "his", "him": "him"}, "she": {"he": "she", "his": "her", "him": "her"}}


def opposite(situation: str) -> str:
    return next(b if a == situation else a for a, b in OPPOSITES if situation in (a, b))


def fill(template: str, name: str, pronoun: str) -> str:
    """A template with the person's name and pronouns, every sentence capitalized."""
    text = template.format(name=name, **PRONOUNS[pronoun])
    return re.sub(r"(^|[.!?] )([a-z])", lambda match: match.group(1) + match.group(2).upper(), text)
