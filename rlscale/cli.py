def main() -> None:
    import rlscale.envs
    print(rlscale.envs.__file__)
