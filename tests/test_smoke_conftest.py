from brainseg.data import find_cases, read_image, read_mask


def test_synth_tree_reads(synth_root, tiny_checkpoints):
    cases = find_cases(synth_root)
    assert len(cases) == 6 and all(len(c) == 12 for c in cases)
    img, m = read_image(cases[0].images[5]), read_mask(cases[0].masks[5])
    assert img.shape == (64, 64, 3) and set(m.ravel()) <= {0, 1}
