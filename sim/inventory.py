"""Seeded host inventory for the simulator.

Every host is one machine (``machine_id``) with 1-8 GPUs of one model and one local-volume
offer. The same seed always yields the same hosts, so tests and benchmarks can rely on ids.
"""

import random
from dataclasses import dataclass

# (model, GPU RAM in MB, base $/h per GPU, CUDA, driver) as Vast reports them.
GPU_MODELS = [
    ("RTX 4090", 24564, 0.35, 12.4, "550.54.14"),
    ("RTX 3090", 24576, 0.18, 12.2, "535.86.05"),
    ("A100 PCIE", 40960, 0.85, 12.2, "535.104.05"),
    ("H100 SXM", 81559, 2.10, 12.4, "550.90.07"),
]
GPU_NAMES = [m[0] for m in GPU_MODELS]

LOCATIONS = [
    "Texas, US", "California, US", "Oregon, US", "Virginia, US", "Quebec, CA", "Ontario, CA",
    "Bavaria, DE", "North Holland, NL", "Ile-de-France, FR", "Stockholm, SE", "Tokyo, JP",
    "New South Wales, AU",
]

HOST_COUNT = 80
# the first hosts are forced to be verified RTX 4090 boxes with 3+ GPUs, so a warm pool
# (running primary + stopped standby on one host) always has candidates
GUARANTEED_4090_HOSTS = 24

# offer ids are derived from the machine: GPU offers are machine_id*100 + num_gpus,
# the machine's volume offer is machine_id*100 + VOLUME_OFFER_SUFFIX
OFFER_GPU_COUNTS = (1, 2, 4, 8)
VOLUME_OFFER_SUFFIX = 50

# offers are listed until a month after the simulator's epoch
OFFER_LIFETIME_SECONDS = 30 * 86400


@dataclass
class Host:
    machine_id: int
    host_id: int
    gpu_name: str
    total_gpus: int
    gpu_ram: int
    gpu_price: float
    cpu_cores: int
    cpu_ram: int
    disk_space: float
    volume_space: float
    storage_cost: float
    reliability: float
    verification: str
    geolocation: str
    hosting_type: int
    inet_up: float
    inet_down: float
    cuda_max_good: float
    driver_version: str
    public_ipaddr: str
    dlperf: float
    # mutable state, owned by the world
    used_gpus: int = 0
    volume_used: float = 0.0
    failed: bool = False
    rented_out: bool = False

    @property
    def volume_offer_id(self) -> int:
        return self.machine_id * 100 + VOLUME_OFFER_SUFFIX

    @property
    def volume_free(self) -> float:
        return self.volume_space - self.volume_used

    @property
    def free_gpus(self) -> int:
        # a failed host schedules nothing; a rented-out host's GPUs all belong to others
        if self.failed or self.rented_out:
            return 0
        return self.total_gpus - self.used_gpus


def build_hosts(seed: int) -> list[Host]:
    """The seeded inventory, ordered by machine_id."""
    rng = random.Random(seed)
    machine_ids = sorted(rng.sample(range(10_000, 99_999), HOST_COUNT))
    guaranteed = set(rng.sample(range(HOST_COUNT), GUARANTEED_4090_HOSTS))
    hosts = []
    for i, machine_id in enumerate(machine_ids):
        if i in guaranteed:
            model = GPU_MODELS[0]
            total = rng.choice([3, 4, 4, 6, 8, 8])
            verification = "verified"
            reliability = rng.uniform(0.97, 0.999)
        else:
            model = rng.choice(GPU_MODELS)
            total = rng.choice([1, 1, 2, 2, 4, 4, 8]) if model[0] != "RTX 4090" else rng.randint(1, 2)
            verification = rng.choices(["verified", "unverified", "deverified"], [7, 2, 1])[0]
            reliability = rng.uniform(0.85, 0.999)
        name, gpu_ram, base_price, cuda, driver = model
        datacenter = rng.random() < 0.3
        hosts.append(Host(
            machine_id=machine_id,
            host_id=100_000 + machine_id % 7919,
            gpu_name=name,
            total_gpus=total,
            gpu_ram=gpu_ram,
            gpu_price=round(base_price * rng.uniform(0.8, 1.4), 4),
            cpu_cores=total * rng.choice([8, 12, 16]),
            cpu_ram=total * rng.choice([32, 64, 128]) * 1024,
            disk_space=float(rng.choice([500, 1000, 2000, 4000])),
            volume_space=float(rng.choice([200, 500, 1000])),
            storage_cost=round(rng.uniform(0.05, 0.2), 3),
            reliability=round(reliability, 4),
            verification=verification,
            geolocation=rng.choice(LOCATIONS),
            hosting_type=1 if datacenter else 0,
            inet_up=round(rng.uniform(100, 5000), 1),
            inet_down=round(rng.uniform(100, 5000), 1),
            cuda_max_good=cuda,
            driver_version=driver,
            public_ipaddr=f"{rng.randint(23, 210)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            dlperf=round(total * rng.uniform(20, 120), 2),
        ))
    return hosts
