"""The captions the embedded CLIP stand-ins learn from, which the synthetic crawl's captions also use.

The stand-ins are product (the metadata pass runs them on the embedded
default) and must not depend on the demo world, so the words both share live
here: class templates, the five non-English languages, and the photographs'
descriptions.
"""

from __future__ import annotations

LANGUAGES = ("fr", "de", "es", "it", "pt")
TRANSLATIONS = {
    "red": {"fr": "rouge", "de": "rot", "es": "rojo", "it": "rosso", "pt": "vermelho"},
    "green": {"fr": "vert", "de": "grün", "es": "verde", "it": "verde", "pt": "verde"},
    "blue": {"fr": "bleu", "de": "blau", "es": "azul", "it": "blu", "pt": "azul"},
    "yellow": {"fr": "jaune", "de": "gelb", "es": "amarillo", "it": "giallo", "pt": "amarelo"},
    "circle": {"fr": "un cercle", "de": "ein Kreis", "es": "un círculo", "it": "un cerchio", "pt": "um círculo"},
    "square": {"fr": "un carré", "de": "ein Quadrat", "es": "un cuadrado", "it": "un quadrato", "pt": "um quadrado"},
    "triangle": {"fr": "un triangle", "de": "ein Dreieck", "es": "un triángulo", "it": "un triangolo",
                 "pt": "um triângulo"},
}
TEMPLATES = ("a photo of a {c}.", "a {c} on a plain background", "{c} icon for your website",
             "a picture showing a {c} on a plain background", "the {c} in this picture")
PHOTO_CAPTIONS = {
    "astronaut": "portrait of an astronaut in a space suit",
    "camera": "a man holding a camera",
    "coffee": "a cup of coffee",
    "chelsea": "a cat looking up",
    "rocket": "a rocket on the launch pad",
}


def translate(label: str, lang: str) -> str:
    color, shape = label.split(" ")
    noun, adj = TRANSLATIONS[shape][lang], TRANSLATIONS[color][lang]
    return f"{noun}, {adj}" if lang == "de" else f"{noun} {adj}"
