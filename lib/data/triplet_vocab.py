"""The entity and position vocabulary of the triplet extraction (MedKLIP-style queries).

75 entities (8 normal observations, 65 abnormal findings or devices, a tail class ``other``
for findings outside the list and an ``excluded`` class for mentions that are dropped) and
51 anatomical positions with sides and zones. MedKLIP's published lists (Wu et al., ICCV
2023) were the reference for the size and kind of each set; the names, match terms and
descriptions are this project's own, chosen to cover the 14 CheXpert observations
(`lib.data.mimic.LABELS`) and every finding the demo report writer
(`lib.demo.synth_reports`) states. A triplet without a stated position carries the
position string `UNSPECIFIED`, which is not one of the 51.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.data.mimic import LABELS

UNSPECIFIED = "unspecified"


@dataclass(frozen=True)
class Entity:
    name: str
    description: str
    terms: tuple[str, ...]  # lower-case phrases matched on token boundaries
    chexpert: str | None = None  # the CheXpert label this entity counts towards
    normal: bool = False  # a normal observation ("the lungs are clear")
    region: str = "lung"  # where a bare side word ("left") places it: see SIDE_DEFAULTS
    implies_absent: tuple[str, ...] = ()  # normal observations: entities they rule out


def _e(name, description, terms=(), chexpert=None, region="lung", **kw) -> Entity:
    return Entity(name, description, (name, *terms), chexpert, region=region, **kw)


_LUNG_CLEAR = ("atelectasis", "consolidation", "edema", "pneumonia", "opacity", "lung lesion")

NORMAL_ENTITIES: tuple[Entity, ...] = (
    Entity(
        "clear lungs",
        "The lungs are well aerated with no focal or diffuse abnormality of the parenchyma.",
        ("lungs are clear", "lungs are well expanded and clear", "clear lungs"),
        normal=True,
        implies_absent=_LUNG_CLEAR,
    ),
    Entity(
        "normal heart size",
        "The cardiac silhouette measures within the normal range on the radiograph.",
        ("normal heart size", "heart size is normal", "heart size is within normal limits"),
        normal=True,
        region="heart",
        implies_absent=("cardiomegaly",),
    ),
    Entity(
        "normal mediastinum",
        "The mediastinal contours are of normal width and shape.",
        ("normal mediastinal contours", "mediastinal contours are normal"),
        normal=True,
        region="mediastinum",
        implies_absent=("enlarged cardiomediastinum",),
    ),
    Entity(
        "normal hila",
        "Both pulmonary hila are of normal size, density and position.",
        ("hila are unremarkable", "hilar contours are normal", "normal hila"),
        normal=True,
        region="hilum",
    ),
    Entity(
        "normal lung volumes",
        "The lungs are inflated to a normal degree, neither low nor hyperexpanded.",
        ("lung volumes are normal", "normal lung volumes"),
        normal=True,
    ),
    Entity(
        "midline trachea",
        "The trachea lies in the midline without deviation or narrowing.",
        ("trachea is midline", "midline trachea"),
        normal=True,
        region="mediastinum",
    ),
    Entity(
        "unremarkable soft tissues and bones",
        "The chest wall, soft tissues, bones and visualised upper abdomen show no abnormality.",
        (
            "soft tissues are unremarkable",
            "upper abdomen is unremarkable",
            "osseous structures are intact",
            "osseous structures are unremarkable",
        ),
        normal=True,
        region="bone",
    ),
    Entity(
        "no acute abnormality",
        "The study shows no acute cardiopulmonary or intrathoracic abnormality.",
        (
            "no acute cardiopulmonary process",
            "no acute cardiopulmonary abnormality",
            "no acute intrathoracic process",
            "no evidence of acute cardiopulmonary disease",
            "no acute findings",
            "no acute cardiopulmonary findings",
        ),
        chexpert="No Finding",
        normal=True,
    ),
)

ABNORMAL_ENTITIES: tuple[Entity, ...] = (
    # --- the lung parenchyma
    _e(
        "atelectasis",
        "Incomplete expansion of lung tissue, often linear or plate-like.",
        ("atelectases", "atelectatic", "atelectatic change", "atelectatic changes"),
        "Atelectasis",
    ),
    _e(
        "collapse",
        "Complete loss of aeration of a lobe or a whole lung.",
        ("collapsed", "lobar collapse"),
        "Atelectasis",
    ),
    _e(
        "consolidation",
        "Air spaces filled with fluid, pus or cells, giving a dense opacity.",
        ("consolidations", "consolidative opacity", "airspace consolidation"),
        "Consolidation",
    ),
    _e(
        "opacity",
        "An area of increased attenuation of the lung on the radiograph.",
        (
            "opacities",
            "opacification",
            "opacifications",
            "airspace opacity",
            "airspace opacities",
            "airspace disease",
        ),
        "Lung Opacity",
    ),
    _e(
        "infiltrate",
        "An ill-defined parenchymal opacity suggesting cellular or fluid filling.",
        ("infiltrates", "infiltration"),
        "Lung Opacity",
    ),
    _e(
        "density",
        "A focal region that absorbs more x-rays than the surrounding lung.",
        ("densities",),
        "Lung Opacity",
    ),
    _e(
        "pneumonia",
        "Infection of the lung parenchyma.",
        ("pneumonias", "infection", "infectious process", "bronchopneumonia"),
        "Pneumonia",
    ),
    _e(
        "aspiration",
        "Inhaled foreign material or secretions in the airways or lung.",
        ("aspiration pneumonitis",),
        "Pneumonia",
    ),
    _e(
        "edema",
        "Excess fluid in the interstitium or alveoli of the lung.",
        (
            "oedema",
            "pulmonary edema",
            "interstitial edema",
            "interstitial pulmonary edema",
            "alveolar edema",
            "fluid overload",
        ),
        "Edema",
    ),
    _e(
        "vascular congestion",
        "Engorged pulmonary vessels, typically from raised venous pressure.",
        ("pulmonary vascular congestion", "congestion", "vascular engorgement"),
        None,
    ),
    _e(
        "heart failure",
        "Radiographic signs of cardiac decompensation.",
        ("chf", "congestive heart failure"),
        "Edema",
        region="heart",
    ),
    _e(
        "vascular redistribution",
        "Upper-zone prominence of pulmonary vessels.",
        ("cephalization", "redistribution"),
        None,
    ),
    _e(
        "lung lesion",
        "A focal abnormality of the lung not further characterised.",
        ("lesion", "lesions", "lung lesions"),
        "Lung Lesion",
    ),
    _e(
        "nodule",
        "A rounded opacity of the lung up to 3 cm across.",
        ("nodules", "pulmonary nodule", "pulmonary nodules", "nodular opacity"),
        "Lung Lesion",
    ),
    _e(
        "mass",
        "A rounded opacity of the lung larger than 3 cm.",
        ("masses", "pulmonary mass"),
        "Lung Lesion",
    ),
    _e(
        "granuloma",
        "A small, often calcified nodule left by old inflammation.",
        ("granulomas", "calcified granuloma"),
        None,
    ),
    _e(
        "emphysema",
        "Destruction of alveolar walls with hyperlucent, overinflated lungs.",
        ("emphysematous",),
        None,
    ),
    _e(
        "hyperinflation",
        "Lungs expanded beyond normal volume, with flattened diaphragms.",
        ("hyperinflated", "hyperexpanded", "hyperexpansion"),
        None,
    ),
    _e(
        "low lung volumes",
        "Lungs inflated less than normal, crowding the vessels.",
        ("low lung volume", "hypoinflation"),
        None,
    ),
    _e(
        "scarring",
        "Fibrotic change in the lung after earlier injury.",
        ("scar", "scars", "parenchymal scarring", "fibrosis", "fibrotic change"),
        None,
    ),
    _e(
        "interstitial abnormality",
        "Thickening or opacity of the lung's supporting tissue.",
        (
            "interstitial markings",
            "interstitial opacities",
            "reticular opacities",
            "interstitial lung disease",
        ),
        None,
    ),
    _e("bronchiectasis", "Permanent widening of bronchi.", (), None),
    _e("cavity", "A gas-filled space inside a lung lesion.", ("cavitation", "cavitary"), None),
    _e("air trapping", "Retained air in the lung on expiration.", (), None),
    _e("pulmonary embolism", "A clot lodged in a pulmonary artery.", ("embolism", "pe"), None),
    # --- the pleura
    _e(
        "pleural effusion",
        "Fluid collected in the pleural space.",
        ("pleural effusions", "effusion", "effusions", "pleural fluid", "hydrothorax"),
        "Pleural Effusion",
        region="pleura",
    ),
    _e(
        "pneumothorax",
        "Air in the pleural space, separating lung from chest wall.",
        ("pneumothoraces", "ptx"),
        "Pneumothorax",
        region="pleura",
    ),
    _e(
        "hydropneumothorax",
        "Both air and fluid in the pleural space.",
        (),
        "Pneumothorax",
        region="pleura",
    ),
    _e(
        "pleural thickening",
        "Thickened pleura, from old inflammation, fibrosis or tumour.",
        ("apical pleural thickening", "pleural scarring", "apical pleural scarring"),
        "Pleural Other",
        region="pleura",
    ),
    _e(
        "pleural plaque",
        "A localised, often calcified, area of pleural thickening.",
        ("pleural plaques", "calcified pleural plaques"),
        "Pleural Other",
        region="pleura",
    ),
    _e(
        "costophrenic blunting",
        "Loss of the sharp angle between diaphragm and chest wall.",
        ("blunting", "blunting of the costophrenic angle"),
        None,
        region="pleura",
    ),
    # --- heart and mediastinum
    _e(
        "cardiomegaly",
        "An enlarged cardiac silhouette.",
        ("enlarged heart", "cardiac enlargement", "enlarged cardiac silhouette"),
        "Cardiomegaly",
        region="heart",
    ),
    _e(
        "enlarged cardiomediastinum",
        "A widened mediastinum or enlarged cardiomediastinal outline.",
        (
            "mediastinal widening",
            "widened mediastinum",
            "widening of the mediastinum",
            "widening of the superior mediastinum",
            "enlarged cardiomediastinal silhouette",
            "mediastinal enlargement",
        ),
        "Enlarged Cardiomediastinum",
        region="mediastinum",
    ),
    _e(
        "pericardial effusion",
        "Fluid around the heart, enlarging its outline.",
        (),
        "Enlarged Cardiomediastinum",
        region="heart",
    ),
    _e(
        "hilar enlargement",
        "Enlarged pulmonary hila, from vessels or lymph nodes.",
        ("hilar prominence", "hilar fullness", "hilar adenopathy"),
        None,
        region="hilum",
    ),
    _e(
        "lymphadenopathy",
        "Enlarged lymph nodes.",
        ("adenopathy", "lymph node enlargement"),
        None,
        region="mediastinum",
    ),
    _e(
        "tortuous aorta",
        "An elongated, curving thoracic aorta.",
        ("aortic tortuosity", "tortuosity of the aorta", "tortuous thoracic aorta"),
        None,
        region="mediastinum",
    ),
    _e(
        "aortic calcification",
        "Calcium deposits in the wall of the aorta.",
        ("calcified aorta", "atherosclerotic calcification", "aortic knob calcification"),
        None,
        region="mediastinum",
    ),
    _e(
        "calcification",
        "Calcium deposit in a tissue other than the aortic wall.",
        ("calcifications", "calcified"),
        None,
    ),
    _e(
        "hiatal hernia",
        "Part of the stomach displaced through the diaphragm into the chest.",
        ("hiatus hernia", "hernia"),
        None,
        region="mediastinum",
    ),
    _e("pneumomediastinum", "Air in the mediastinum.", (), None, region="mediastinum"),
    _e(
        "mediastinal shift",
        "Displacement of the mediastinum towards one side.",
        ("shift", "tracheal deviation"),
        None,
        region="mediastinum",
    ),
    # --- diaphragm, abdomen, chest wall
    _e(
        "diaphragm elevation",
        "A hemidiaphragm lying higher than expected.",
        ("elevated hemidiaphragm", "elevation of the hemidiaphragm", "elevated diaphragm"),
        None,
        region="diaphragm",
    ),
    _e(
        "free air",
        "Gas under the diaphragm outside the bowel.",
        ("pneumoperitoneum", "free intraperitoneal air", "subdiaphragmatic free air"),
        None,
        region="diaphragm",
    ),
    _e(
        "bowel distention",
        "Dilated, gas-filled bowel loops or stomach.",
        ("distention", "distension", "dilated bowel"),
        None,
        region="diaphragm",
    ),
    _e(
        "subcutaneous emphysema",
        "Air in the soft tissues of the chest wall.",
        ("subcutaneous air", "soft tissue emphysema"),
        None,
        region="wall",
    ),
    # --- bones
    _e(
        "fracture",
        "A break in a bone: rib, clavicle, vertebra or other.",
        (
            "fractures",
            "rib fracture",
            "rib fractures",
            "compression fracture",
            "osseous abnormality",
            "acute osseous abnormality",
        ),
        "Fracture",
        region="bone",
    ),
    _e(
        "bone deformity",
        "An abnormal shape of a bone, such as an old healed deformity.",
        ("deformity", "deformities"),
        None,
        region="bone",
    ),
    _e(
        "degenerative change",
        "Wear-related bony change, e.g. of the spine or shoulders.",
        ("degenerative changes", "degenerative disease", "spondylosis", "osteophytes"),
        None,
        region="bone",
    ),
    _e(
        "scoliosis",
        "Lateral curvature of the spine.",
        ("kyphoscoliosis", "kyphosis"),
        None,
        region="bone",
    ),
    _e(
        "bone lesion",
        "A focal lytic or sclerotic lesion in bone.",
        ("lytic lesion", "sclerotic lesion", "osseous lesion"),
        None,
        region="bone",
    ),
    # --- tubes, lines and devices
    _e(
        "support device",
        "A medical tube, line or device in or on the chest.",
        (
            "support devices",
            "lines or tubes",
            "lines and tubes",
            "tubes and lines",
            "device",
            "devices",
            "monitoring devices",
            "hardware",
        ),
        "Support Devices",
        region="device",
    ),
    _e(
        "endotracheal tube",
        "A breathing tube through the mouth into the trachea.",
        ("ett", "et tube", "endotracheal"),
        "Support Devices",
        region="device",
    ),
    _e(
        "tracheostomy tube",
        "A breathing tube placed through the neck into the trachea.",
        ("tracheostomy", "trach tube"),
        "Support Devices",
        region="device",
    ),
    _e(
        "enteric tube",
        "A feeding or drainage tube through the nose or mouth to the gut.",
        (
            "nasogastric tube",
            "orogastric tube",
            "ng tube",
            "og tube",
            "ngt",
            "feeding tube",
            "dobhoff",
        ),
        "Support Devices",
        region="device",
    ),
    _e(
        "central venous catheter",
        "A catheter whose tip lies in a large central vein.",
        (
            "central line",
            "central venous line",
            "internal jugular line",
            "subclavian line",
            "catheter",
            "catheters",
            "venous catheter",
        ),
        "Support Devices",
        region="device",
    ),
    _e(
        "picc line",
        "A peripherally inserted central catheter.",
        ("picc", "peripherally inserted central catheter"),
        "Support Devices",
        region="device",
    ),
    _e(
        "swan-ganz catheter",
        "A pulmonary artery catheter.",
        ("pulmonary artery catheter", "swan ganz catheter"),
        "Support Devices",
        region="device",
    ),
    _e(
        "chest tube",
        "A drain placed in the pleural space.",
        ("chest tubes", "pleural drain", "pigtail catheter", "thoracostomy tube"),
        "Support Devices",
        region="device",
    ),
    _e(
        "pacemaker",
        "A cardiac pacing device with its leads.",
        ("pacer", "pacemaker leads", "pacing leads", "leads", "lead", "icd", "defibrillator"),
        "Support Devices",
        region="device",
    ),
    _e(
        "sternotomy wires",
        "Wires closing the sternum after cardiac surgery.",
        ("sternotomy", "median sternotomy", "median sternotomy wires", "sternal wires"),
        "Support Devices",
        region="device",
    ),
    _e(
        "surgical clips",
        "Metallic clips left from an operation.",
        ("clips", "clip", "surgical clip"),
        None,
        region="device",
    ),
    _e(
        "stent",
        "A tubular mesh support inside a vessel or airway.",
        ("stents", "stent graft"),
        "Support Devices",
        region="device",
    ),
    _e(
        "prosthetic valve",
        "An artificial heart valve.",
        ("valve replacement",),
        "Support Devices",
        region="heart",
    ),
    _e(
        "radiopaque object",
        "A radiodense line or object whose nature is not stated.",
        ("radiopaque line", "radiopaque density", "foreign body", "external catheter"),
        None,
        region="device",
    ),
)

TAIL_ENTITY = Entity(
    "other",
    "Any abnormal finding the vocabulary does not name.",
    (),
    region="lung",
)
EXCLUDED_ENTITY = Entity(
    "excluded",
    "A mention that is recognised but not used as a finding, such as a clinical question.",
    (),
    region="lung",
)

ENTITIES: tuple[Entity, ...] = (*NORMAL_ENTITIES, *ABNORMAL_ENTITIES, TAIL_ENTITY, EXCLUDED_ENTITY)


@dataclass(frozen=True)
class Position:
    name: str
    description: str
    terms: tuple[str, ...]  # lower-case phrases; a term may carry a rib ordinal, see triplets
    side: str | None = None  # "left" / "right" / "bilateral" / None


def _p(name, description, terms=(), side=None) -> Position:
    return Position(name, description, (name, *terms), side)


POSITIONS: tuple[Position, ...] = (
    _p("trachea", "The central airway above the carina.", ("tracheal",)),
    _p("carina", "The split of the trachea into the main bronchi.", ()),
    _p("left hilum", "The root of the left lung.", ("left hilar", "left hila"), "left"),
    _p("right hilum", "The root of the right lung.", ("right hilar", "right hila"), "right"),
    _p("hila", "Both lung roots.", ("bilateral hilar", "hilar", "hilum", "perihilar"), "bilateral"),
    _p(
        "left pleura",
        "The pleural space of the left hemithorax.",
        ("left pleural", "left hemithorax", "left-sided pleural"),
        "left",
    ),
    _p(
        "right pleura",
        "The pleural space of the right hemithorax.",
        ("right pleural", "right hemithorax", "right-sided pleural"),
        "right",
    ),
    _p(
        "bilateral pleura", "The pleural spaces of both sides.", ("bilateral pleural",), "bilateral"
    ),
    _p("left lung apex", "The top of the left lung.", ("left apical", "left apex"), "left"),
    _p("right lung apex", "The top of the right lung.", ("right apical", "right apex"), "right"),
    _p(
        "lung apices",
        "The tops of both lungs.",
        ("apices", "bilateral apical", "biapical"),
        "bilateral",
    ),
    _p(
        "left upper lung zone",
        "The upper third of the left lung.",
        ("left upper lung", "left upper zone", "left upper lung field"),
        "left",
    ),
    _p(
        "left mid lung zone",
        "The middle third of the left lung.",
        ("left mid lung", "left midlung", "left mid zone", "left middle lung"),
        "left",
    ),
    _p(
        "left lower lung zone",
        "The lower third of the left lung.",
        ("left lower lung", "left lower zone", "left lower lung field"),
        "left",
    ),
    _p(
        "right upper lung zone",
        "The upper third of the right lung.",
        ("right upper lung", "right upper zone", "right upper lung field"),
        "right",
    ),
    _p(
        "right mid lung zone",
        "The middle third of the right lung.",
        ("right mid lung", "right midlung", "right mid zone", "right middle lung"),
        "right",
    ),
    _p(
        "right lower lung zone",
        "The lower third of the right lung.",
        ("right lower lung", "right lower zone", "right lower lung field"),
        "right",
    ),
    _p("left upper lobe", "The upper lobe of the left lung.", ("lul",), "left"),
    _p("lingula", "The tongue-shaped part of the left upper lobe.", ("lingular",), "left"),
    _p("left lower lobe", "The lower lobe of the left lung.", ("lll",), "left"),
    _p("right upper lobe", "The upper lobe of the right lung.", ("rul",), "right"),
    _p("right middle lobe", "The middle lobe of the right lung.", ("rml",), "right"),
    _p("right lower lobe", "The lower lobe of the right lung.", ("rll",), "right"),
    _p(
        "left lung base",
        "The lowest part of the left lung.",
        ("left basilar", "left base", "left basal", "left lung bases", "left basilar lung"),
        "left",
    ),
    _p(
        "right lung base",
        "The lowest part of the right lung.",
        ("right basilar", "right base", "right basal", "right basilar lung"),
        "right",
    ),
    _p(
        "lung bases",
        "The lowest parts of both lungs.",
        ("bibasilar", "bibasal", "bases", "bilateral basilar", "bilateral lower lung"),
        "bilateral",
    ),
    _p("left lung", "The left lung, zone not stated.", ("left lung field",), "left"),
    _p("right lung", "The right lung, zone not stated.", ("right lung field",), "right"),
    _p(
        "both lungs",
        "Both lungs, diffusely or in several places.",
        ("bilateral", "bilaterally", "lungs", "bilateral lungs"),
        "bilateral",
    ),
    _p(
        "left costophrenic angle",
        "The angle of the left diaphragm and chest wall.",
        ("left costophrenic", "left cp angle"),
        "left",
    ),
    _p(
        "right costophrenic angle",
        "The angle of the right diaphragm and chest wall.",
        ("right costophrenic", "right cp angle"),
        "right",
    ),
    _p(
        "costophrenic angles",
        "The angles between the diaphragm and the chest wall.",
        ("costophrenic angle", "bilateral costophrenic"),
        "bilateral",
    ),
    _p(
        "left hemidiaphragm",
        "The left half of the diaphragm.",
        ("left diaphragm", "left hemidiaphragmatic"),
        "left",
    ),
    _p(
        "right hemidiaphragm",
        "The right half of the diaphragm.",
        ("right diaphragm", "right hemidiaphragmatic"),
        "right",
    ),
    _p("diaphragm", "The diaphragm, side not stated.", ("hemidiaphragms", "diaphragms")),
    _p(
        "retrocardiac region",
        "The lung behind the heart, left lower lobe.",
        ("retrocardiac",),
        "left",
    ),
    _p(
        "cardiac silhouette",
        "The outline of the heart.",
        ("heart", "cardiac", "heart border", "heart size"),
    ),
    _p(
        "mediastinum",
        "The central compartment between the lungs.",
        ("mediastinal", "cardiomediastinal silhouette", "cardiomediastinal"),
    ),
    _p("superior mediastinum", "The upper part of the mediastinum.", ()),
    _p("aorta", "The thoracic aorta and aortic arch.", ("aortic", "aortic arch", "aortic knob")),
    _p(
        "superior vena cava",
        "The large vein draining into the right atrium from above.",
        ("svc", "mid svc", "lower svc", "upper svc"),
    ),
    _p(
        "cavoatrial junction",
        "Where the superior vena cava joins the right atrium.",
        ("cavo-atrial junction",),
    ),
    _p("right atrium", "The right upper chamber of the heart.", ("right atrial",)),
    _p("right ventricle", "The right lower chamber of the heart.", ("right ventricular",)),
    _p("left ribs", "The ribs of the left side.", ("left rib",), "left"),
    _p("right ribs", "The ribs of the right side.", ("right rib",), "right"),
    _p("left clavicle", "The left collarbone.", ("left clavicular",), "left"),
    _p("right clavicle", "The right collarbone.", ("right clavicular",), "right"),
    _p(
        "thoracic spine",
        "The thoracic vertebrae.",
        (
            "spine",
            "thoracic vertebral body",
            "vertebral body",
            "vertebral bodies",
            "thoracic vertebral",
        ),
    ),
    _p("stomach", "The stomach below the left hemidiaphragm.", ("below the diaphragm", "gastric")),
    _p("chest wall", "The soft tissues and bones around the thorax.", ("soft tissues", "chest")),
)

# Where a bare side word (no zone) puts an entity of each region.
SIDE_DEFAULTS: dict[str, dict[str, str]] = {
    "lung": {"left": "left lung", "right": "right lung", "bilateral": "both lungs"},
    "pleura": {"left": "left pleura", "right": "right pleura", "bilateral": "bilateral pleura"},
    "bone": {"left": "left ribs", "right": "right ribs", "bilateral": "thoracic spine"},
    "hilum": {"left": "left hilum", "right": "right hilum", "bilateral": "hila"},
    "diaphragm": {
        "left": "left hemidiaphragm",
        "right": "right hemidiaphragm",
        "bilateral": "diaphragm",
    },
    "device": {"left": "chest wall", "right": "chest wall", "bilateral": "chest wall"},
    "wall": {"left": "chest wall", "right": "chest wall", "bilateral": "chest wall"},
    "heart": {"left": "cardiac silhouette", "right": "cardiac silhouette"},
    "mediastinum": {"left": "mediastinum", "right": "mediastinum"},
}
SIDE_WORDS: dict[str, str] = {
    "left": "left",
    "right": "right",
    "bilateral": "bilateral",
    "both": "bilateral",
}

ENTITY_NAMES: tuple[str, ...] = tuple(e.name for e in ENTITIES)
POSITION_NAMES: tuple[str, ...] = tuple(p.name for p in POSITIONS)
ENTITY_BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}
POSITION_BY_NAME: dict[str, Position] = {p.name: p for p in POSITIONS}

# The entity that stands for each CheXpert label (finer entities count towards it too).
_CHEXPERT_ENTITY: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Enlarged Cardiomediastinum": "enlarged cardiomediastinum",
    "Fracture": "fracture",
    "Lung Lesion": "lung lesion",
    "Lung Opacity": "opacity",
    "No Finding": "no acute abnormality",
    "Pleural Effusion": "pleural effusion",
    "Pleural Other": "pleural thickening",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    "Support Devices": "support device",
}


def chexpert_entity(label: str) -> str:
    """The entity name that stands for CheXpert ``label``; KeyError names the valid ones."""
    try:
        return _CHEXPERT_ENTITY[label]
    except KeyError:
        raise KeyError(f"unknown CheXpert label {label!r}; valid: {list(LABELS)}") from None


def vocab_record() -> dict:
    """The vocabulary as JSON-serialisable lists (the stage writes it as vocab.json)."""
    return {
        "entities": [
            {
                "name": e.name,
                "description": e.description,
                "chexpert": e.chexpert,
                "normal": e.normal,
            }
            for e in ENTITIES
        ],
        "positions": [{"name": p.name, "description": p.description} for p in POSITIONS],
    }


def _check() -> None:
    n_normal = sum(e.normal for e in ENTITIES)
    if (len(ENTITIES), n_normal, len(ABNORMAL_ENTITIES)) != (75, 8, 65):
        raise AssertionError(
            f"entity vocabulary: {len(ENTITIES)} entities, {n_normal} normal, "
            f"{len(ABNORMAL_ENTITIES)} abnormal; expected 75 / 8 / 65"
        )
    if len(POSITIONS) != 51 or UNSPECIFIED in POSITION_NAMES:
        raise AssertionError(f"position vocabulary: {len(POSITIONS)} positions, expected 51")
    if len(set(ENTITY_NAMES)) != len(ENTITY_NAMES) or len(set(POSITION_NAMES)) != 51:
        raise AssertionError("entity or position names repeat")
    for label, name in _CHEXPERT_ENTITY.items():
        if ENTITY_BY_NAME[name].chexpert != label:
            raise AssertionError(f"{name!r} does not count towards {label!r}")
    if set(_CHEXPERT_ENTITY) != set(LABELS):
        raise AssertionError("every CheXpert label needs an entity")
    for e in ENTITIES:
        for name in e.implies_absent:
            if name not in ENTITY_BY_NAME:
                raise AssertionError(f"{e.name!r} implies unknown entity {name!r}")


_check()
