"""Microcontroller boards and whether a model fits them: the tensor arena in RAM, the model in flash. Each board's
figures name the datasheet they come from; the model card shows the table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Board:
    name: str
    chip: str
    ram_bytes: int  # on-chip SRAM
    flash_bytes: int  # flash the firmware can use
    source: str  # where the figures come from


BOARDS = (
    Board("Arduino Uno", "ATmega328P", 2 * 1024, 32 * 1024, "Microchip ATmega328P datasheet: 32 KB flash, 2 KB SRAM"),
    Board(
        'STM32 "Blue Pill"', "STM32F103C8", 20 * 1024, 64 * 1024, "ST STM32F103x8 datasheet: 64 KB flash, 20 KB SRAM"
    ),
    Board(
        "Arduino Nano 33 BLE Sense",
        "nRF52840",
        256 * 1024,
        1024 * 1024,
        "Nordic nRF52840 product specification: 1 MB flash, 256 KB RAM",
    ),
    Board(
        "Raspberry Pi Pico",
        "RP2040",
        264 * 1024,
        2 * 1024 * 1024,
        "Raspberry Pi RP2040 datasheet: 264 KB SRAM; Pico datasheet: 2 MB QSPI flash on the board",
    ),
    Board(
        "ESP32-S3-DevKitC-1 N8",
        "ESP32-S3",
        512 * 1024,
        8 * 1024 * 1024,
        "Espressif ESP32-S3 datasheet: 512 KB SRAM; the N8 module carries 8 MB flash",
    ),
    Board(
        "STM32F746G-DISCO", "STM32F746NG", 320 * 1024, 1024 * 1024, "ST STM32F746xx datasheet: 1 MB flash, 320 KB SRAM"
    ),
    Board(
        "NUCLEO-H743ZI", "STM32H743ZI", 1024 * 1024, 2 * 1024 * 1024, "ST STM32H743xI datasheet: 2 MB flash, 1 MB RAM"
    ),
)


def fits(arena_bytes: int, model_bytes: int, boards: tuple[Board, ...] = BOARDS) -> list[dict]:
    """Does the model fit each board: the arena in its RAM and the model in its flash (the application's own RAM
    and code come on top, so the headroom is shown, not only yes or no)."""
    return [
        {
            "board": b.name,
            "chip": b.chip,
            "ram_bytes": b.ram_bytes,
            "flash_bytes": b.flash_bytes,
            "ram_used": arena_bytes / b.ram_bytes,
            "flash_used": model_bytes / b.flash_bytes,
            "fits": arena_bytes <= b.ram_bytes and model_bytes <= b.flash_bytes,
            "source": b.source,
        }
        for b in boards
    ]
