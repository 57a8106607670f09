"""The brand behind each device model, for manufacturer-level rules."""

from __future__ import annotations

# The brand on the box, for manufacturer-level rules. The catalogue holds product names only.
MANUFACTURERS: dict[str, str] = {
    "Amazon Echo gen2": "Amazon",
    "au network camera": "au (KDDI)",
    "au wireless adapter": "au (KDDI)",
    "Bitfinder Awair Breathe Easy": "Bitfinder",
    "CANDY HOUSE Sesami Wi-Fi access point": "CANDY HOUSE",
    "Google Home gen1": "Google",
    "I-O Data QWatch": "I-O Data",
    "iRobot Roomba": "iRobot",
    "JVC Kenwood CU-HB1": "JVC Kenwood",
    "JVC Kenwood HDTV IP camera": "JVC Kenwood",
    "Line Clova Wave": "LINE",
    "Link Japan eRemote": "Link Japan",
    "Mouse computer room hub": "Mouse Computer",
    "Nature Remo": "Nature",
    "Panasonic Doorphone": "Panasonic",
    "Philips Hue Bridge": "Philips",
    "PLANEX camera one shot!": "PLANEX",
    "PLANEX SmaCam Outdoor": "PLANEX",
    "PLANEX SmaCam PanTilt": "PLANEX",
    "PowerElectric Wi-Fi plug": "PowerElectric",
    "Qrio Hub": "Qrio",
    "Sony Bravia": "Sony",
    "Sony network camera": "Sony",
    "Sony smart speaker": "Sony",
    "Xiaomi Mijia LED": "Xiaomi",
}


def manufacturer_of(model: str) -> str:
    """The manufacturer of a catalogue model; a model outside the catalogue is its own manufacturer."""
    return MANUFACTURERS.get(model, model)
