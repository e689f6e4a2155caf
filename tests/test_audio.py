import numpy as np
import pytest
import soundfile as sf

from lcasc import audio

from .conftest import white_noise


def test_stereo_is_mixed_and_other_rates_resampled(tmp_path):
    x = white_noise(2.0, sr=22050, channels=2)
    sf.write(tmp_path / "s.wav", x, 22050, subtype="PCM_16")
    y = audio.load(tmp_path / "s.wav")
    assert y.ndim == 1 and abs(len(y) - 88200) <= 2


def test_segments_pad_the_last_partial_second():
    segs = audio.segment(np.ones(44100 * 2 + 30000, np.float32))
    assert segs.shape == (3, 44100)
    assert segs[2, 29999] == 1 and segs[2, 30000] == 0
    assert audio.segment(np.ones(1000, np.float32)).shape == (1, 44100)  # short clips still give one
    assert audio.segment(np.ones(44100 + 100, np.float32)).shape == (1, 44100)  # a 2 ms tail is dropped


@pytest.mark.parametrize("content,problem", [(b"", "empty"), (b"RIFF\x00\x00junk", "cannot decode"),
                                             (b"not audio at all" * 50, "cannot decode")])
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, content, problem):
    p = tmp_path / "bad clip.wav"
    p.write_bytes(content)
    with pytest.raises(audio.AudioError, match=problem) as e:
        audio.load(p)
    assert "bad clip.wav" in str(e.value)


def test_nan_samples_are_rejected(tmp_path):
    x = white_noise(1.0)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 44100, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="NaN"):
        audio.load(tmp_path / "nan.wav")


def test_missing_file(tmp_path):
    with pytest.raises(audio.AudioError, match="does not exist"):
        audio.load(tmp_path / "nope.wav")


def test_loud_float_audio_is_scaled_by_its_peak():
    y = audio.to_mono_44k(np.array([0.5, -4.0, 2.0], np.float32), 44100)
    assert np.abs(y).max() == 1.0
