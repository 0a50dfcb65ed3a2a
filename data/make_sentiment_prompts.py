"""Write the movie-review openings of nbs/15_sentiment.ipynb: data/sentiment_prompts_{train,test}.jsonl.

    python data/make_sentiment_prompts.py          # deterministic: the same files every run

The DPO paper (Rafailov et al. 2023, §6.1) prompts GPT-2 with the first 2-8 tokens of IMDb reviews. The Hugging Face
hub is not reachable here, so the project writes its own openings: every hand-written one that passes the checks below (158), topped up from a few
phrase patterns filled from hand-written lists (the element of a film, the kind of film, when and how it was watched). Every opening
has 2-8 words and a VADER compound score of exactly 0 (sentiment-neutral: the reward has nothing to read in the
prompt), no two are the same, and they are shuffled with a fixed seed and cut into 240 for training and 100 held out.
"""
import itertools, json, random
from pathlib import Path

HAND = """This movie was
I watched this film last night and
The director of this picture
When the credits rolled, I
My wife and I rented this
The plot follows a young man who
Having read the book, I
This is the third film in the series
The first half hour
I saw this at a festival
The lead actress plays
Set in 1970s Chicago, the story
I went into this film expecting
Based on a true story, this
My son picked this one and
It has been years since I
The trailer made it look
I remember seeing this on TV
After the first twenty minutes
The opening shot shows
We rented it on a Sunday
Shot in black and white, the film
The story takes place on a ship
Three friends drive across the desert
A retired detective returns to
Two sisters inherit a house and
It starts with a phone call
The camera never leaves the kitchen
This adaptation of the novel
Filmed over three summers, this
I had never heard of this film
My father used to watch this
The cast includes several
Watching this again after ten years
The film runs about two hours
A small town in Maine is
The movie opens in Paris
I caught this one on cable
The sequel picks up where
The main character is a teacher who
We watched it in class and
This was the last film by
The second act moves to
The script was written by
Most of the action happens at night
In this version of the story
I was twelve when I first saw
The movie is told in flashbacks
The dialogue is mostly in French
On paper, the premise
The film follows a family who
The title refers to
A young couple moves to
The runtime is ninety minutes and
Our local theater showed this
The story begins in 1944
Halfway through the movie
The director also wrote
Every scene in this film
The cinematographer uses
For a film made in 1962
The music was composed by
The first thing you notice
The characters spend most of the time
It was released the same year as
I borrowed the DVD from
The film has no music and
I watched the director's cut, which
The narrator explains that
As a fan of westerns, I
The movie is set entirely in
An old man tells his grandson
The studio released this in
The pilot of the series
This documentary follows
The remake changes the ending and
Our book club watched this
The actors improvised most of
A reporter travels to
The story is told by
The heist takes place in
I picked this up at the library
The last ten minutes
The film was shot in Iceland
After reading the reviews, I
The movie starts on a train
Years later, the same director
My roommate insisted that we watch
The subtitles on my copy
It is a slow film about
The whole film takes place in one day
The villain is played by
The running gag in this film
I watched it twice and
The opening credits roll over
A group of students decide to
The film is based on a play
The second half of the movie
The director's previous film
Two brothers run a farm and
The story is set in Tokyo
The camera follows a mail carrier
I rented this because of
This animated feature tells
The premise is simple:
The ending of this film
When I was in college, we
The actor who plays the father
The pacing of the first act
Near the end of the film
The film was made on a budget of
I came across this title while
The costumes in this picture
The story jumps between
My grandmother recommended this
I went to the midnight screening and
A pilot lands in a village
A nurse in a field hospital
The movie begins with a wedding
Four strangers share a cab
We watched the extended edition
A chef opens a restaurant in
The boxer at the center of
Two detectives are assigned to
The island in the title
She moves back to her hometown
The story is framed as a letter
Most of the cast are
The film cuts between two timelines
I watched this with subtitles and
The orchestra in this film
He works the night shift at
Our teacher showed us this in
The movie spends its first hour
A lighthouse keeper and his
Nobody speaks for the first
The camera stays close to
It takes place during one winter
A farmer finds a box in
The production moved to Spain after
I first saw this on a laptop
The family in this story runs
This is a silent film that
My neighbor lent me this
There are only three actors in
The ship leaves port and
This one was filmed in Morocco
The twins at the heart of
The film was restored in
A jazz musician travels to
The courtroom scenes take up
A letter arrives and the family
A pair of astronauts
The mayor of a small town
It was my turn to pick, so
I found the tape in my attic and
We streamed this on Saturday and
The documentary crew spends a year
A postman in rural Italy
The movie is about a chess player
The cameras were hidden in
She plays a lawyer who
The town council decides to
A taxi driver in Mumbai
The story follows a marching band
I watched it in two sittings
The soldiers reach the river and
A botanist arrives on
The plot centers on a bakery
My cousin was an extra in this
It was shown on a double bill with
The mountain climbers set out
I saw the dubbed version, which
The film uses a lot of
A young architect designs
This was filmed on location in
The movie was cut by twenty minutes
A boy and his grandfather
The museum guard in this film
The election at the center of""".splitlines()

ELEMENTS = ["plot", "ending", "opening scene", "soundtrack", "camera work", "dialogue", "script", "pacing", "lighting",
            "editing", "costume design", "score", "cast", "lead actor", "final scene", "title sequence", "set design",
            "screenplay", "second half", "first act", "narration", "casting", "sound mixing", "color palette"]
KINDS = ["movie", "film", "picture", "sequel", "remake", "documentary", "western", "musical", "crime story", "drama",
         "cartoon", "mystery", "biopic", "miniseries", "short film", "feature", "period piece", "road movie"]
WHEN = ["last night", "on Friday", "this weekend", "on a plane", "at the cinema", "with my kids", "on DVD",
        "on television", "in 1998", "at a drive-in", "with my parents", "after work", "on a Sunday afternoon"]
WATCH = ["I watched this {k} {w} and", "We saw this {k} {w} and", "I rented this {k} {w} and", "I caught this {k} {w}"]
ABOUT = ["The {e} of this {k}", "As for the {e}, this {k}", "In this {k}, the {e}"]
WHO = ["The director", "The lead actress", "The screenwriter", "The composer", "The producer", "The narrator",
       "The youngest actor", "The editor"]
DID = ["of this {k} also made", "of this {k} later said", "of this {k} once worked on", "of this {k} grew up in"]

def vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()

def patterns() -> list[str]:
    "Every phrase pattern filled in from the lists above, deduplicated."
    pats = [w.format(k=k, w=t) for w, k, t in itertools.product(WATCH, KINDS, WHEN)]
    pats += [a.format(e=e, k=k) for a, e, k in itertools.product(ABOUT, ELEMENTS, KINDS)]
    pats += [f"{w} {d.format(k=k)}" for w, d, k in itertools.product(WHO, DID, KINDS)]
    return list(dict.fromkeys(pats))

def neutral(texts: list[str]) -> list[str]:
    "The openings with 2-8 words and a VADER compound of exactly 0."
    an = vader()
    return [t for t in texts if 2 <= len(t.split()) <= 8 and an.polarity_scores(t)["compound"] == 0.0]

def openings(n: int, seed: int = 0) -> list[str]:
    "`n` neutral openings in a seeded random order: every neutral hand-written one, the rest from the patterns."
    rng = random.Random(seed)
    hand = neutral(list(dict.fromkeys(h.strip() for h in HAND if h.strip())))
    pats = [p for p in neutral(patterns()) if p not in hand]
    rng.shuffle(pats)
    out = hand + pats[:max(n - len(hand), 0)]
    if len(out) < n: raise SystemExit(f"only {len(out)} neutral openings, need {n}")
    rng.shuffle(out)
    return out

def main(n_train: int = 240, n_test: int = 100, seed: int = 0):
    ok = openings(n_train + n_test, seed)
    here = Path(__file__).parent
    for name, rows in (("train", ok[:n_train]), ("test", ok[n_train:])):
        with open(here / f"sentiment_prompts_{name}.jsonl", "w") as f:
            for t in rows: f.write(json.dumps({"prompt": t}) + "\n")
        print(f"data/sentiment_prompts_{name}.jsonl: {len(rows)} openings")

if __name__ == "__main__": main()
